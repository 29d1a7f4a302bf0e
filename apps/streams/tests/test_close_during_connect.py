"""A socket closed while it is still connecting (Redis lost, SIGTERM drain, the
auth deadline) gives back everything the connect took: leases, groups and
its live-session entry; and an `auth` that arrived in time is never cut off
by the deadline while the connect completes."""

import asyncio

import pytest
from channels.layers import get_channel_layer

from apps.streams.admission import admission
from apps.streams.control import control
from stocktracker.lib import keys
from stocktracker.lib.state import get_state

from .conftest import closed_with, communicator, frame

pytestmark = pytest.mark.django_db(transaction=True)


def _gate(monkeypatch, state, name):
    """Make `state.<name>` wait until the returned event is set; `entered` is
    set once a call is waiting."""
    original = getattr(state, name)
    entered, gate = asyncio.Event(), asyncio.Event()

    async def gated(*args, **kwargs):
        entered.set()
        await gate.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(state, name, gated)
    return entered, gate


async def _nothing_held(token_id):
    state = get_state()
    assert await state.lease_count(f"token:{token_id}") == 0
    assert await state.lease_count(keys.subscribers("market")) == 0
    assert await state.entries() == []


async def _no_control_groups():
    """The process is in no control group any more, locally and in the layer
    (pub/sub or in-memory layer of this loop)."""
    ctl = control()
    await asyncio.sleep(0.2)  # unsubscribing runs in the background
    assert ctl.groups == {} and ctl.conns == {}
    layer = get_channel_layer()
    local = layer._get_layer() if hasattr(layer, "_get_layer") else layer
    assert [group for group, members in local.groups.items() if ctl.channel in members] == []


@pytest.mark.parametrize("gated", ["lease_acquire", "entry_put", "latest_get"])
async def test_redis_lost_while_connecting_releases_what_the_connect_took(owner_token, monkeypatch, gated):
    token, raw = owner_token
    state = get_state()
    entered, gate = _gate(monkeypatch, state, gated)
    comm = communicator(token=raw)
    await comm.connect()
    await asyncio.wait_for(entered.wait(), 3)
    (consumer,) = list(admission().sockets)
    await consumer.backend_lost()  # what the watchdog does when Redis stops answering
    gate.set()
    code, frames = await closed_with(comm)
    assert code == 1013 and [f["type"] for f in frames] == ["error"]
    await asyncio.sleep(0.2)  # let the connect finish its part
    monkeypatch.undo()
    await _nothing_held(token.id)
    await _no_control_groups()


async def test_a_sigterm_drain_while_connecting_releases_the_leases(owner_token, monkeypatch):
    token, raw = owner_token
    entered, gate = _gate(monkeypatch, get_state(), "lease_acquire")
    comm = communicator(token=raw)
    await comm.connect()
    await asyncio.wait_for(entered.wait(), 3)
    (consumer,) = list(admission().sockets)
    shutdown = asyncio.ensure_future(consumer.shutdown())
    await asyncio.sleep(0.1)
    gate.set()
    await shutdown
    code, _ = await closed_with(comm)
    assert code == 4200
    await asyncio.sleep(0.2)
    monkeypatch.undo()
    await _nothing_held(token.id)
    await _no_control_groups()


async def test_an_auth_in_time_is_not_cut_off_by_the_deadline_while_connecting(owner_token, settings, monkeypatch):
    settings.WS_AUTH_TIMEOUT = 0.3
    token, raw = owner_token
    entered, gate = _gate(monkeypatch, get_state(), "lease_acquire")
    comm = communicator()
    await comm.connect()
    await comm.send_to(text_data=f'{{"type":"auth","token":"{raw}"}}')
    await asyncio.wait_for(entered.wait(), 3)
    await asyncio.sleep(0.5)  # the auth deadline passes while the leases are being taken
    gate.set()
    assert (await frame(comm))["type"] == "welcome"
    assert await get_state().lease_count(f"token:{token.id}") == 1
    await comm.disconnect()
    monkeypatch.undo()
    await _nothing_held(token.id)
