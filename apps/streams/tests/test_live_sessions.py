"""Live sessions: a registry of open sockets in Redis, listed in the admin,
with a "disconnect" action that closes sockets on whatever process holds them."""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from stocktracker.lib.state import get_state

from .clients import close_code, outcome, recv_json

pytestmark = pytest.mark.django_db(transaction=True)


def _admin(staff):
    client = Client()
    client.force_login(staff)
    return client


async def test_the_registry_lists_open_sockets_and_the_admin_disconnects_one(processes, staff, owner_token):
    token, raw = owner_token
    first, second = processes.daphne(), processes.daphne()
    _, kept = await outcome(first.ws_url, raw)
    _, kicked = await outcome(second.ws_url, raw)
    sessions = await get_state().entries()
    assert len(sessions) == 2
    entry = sessions[0]
    assert entry["user"] == "owner" and entry["token_prefix"] == token.prefix and entry["stream"] == "market"
    assert entry["ip"] == "127.0.0.1" and entry["since_ms"] > 0 and "sent" in entry
    assert raw not in str(sessions)

    client = await sync_to_async(_admin)(staff)
    page = await sync_to_async(client.get)("/admin/streams/livesession/")
    assert page.status_code == 200
    html = page.content.decode()
    assert token.prefix in html and "Disconnect selected" in html and raw not in html

    victim = next(s for s in sessions if s["process"].endswith(f":{second.pid}"))
    response = await sync_to_async(client.post)("/admin/streams/livesession/", {"session": [victim["id"]]})
    assert response.status_code == 302
    code, frames = await close_code(kicked, timeout=3)
    assert code == 4009 and frames[-1]["code"] == "disconnected"
    kept_id = next(s["id"] for s in sessions if s is not victim)
    deadline = time.monotonic() + 5
    while victim["id"] in (ids := [s["id"] for s in await get_state().entries()]):
        assert time.monotonic() < deadline, "the disconnected socket is still in the registry"
        await asyncio.sleep(0.1)
    assert ids == [kept_id]
    await kept.send('{"type":"ping"}')
    assert (await recv_json(kept))["type"] == "pong"
    await kept.close()


async def test_the_live_sessions_page_is_for_staff_only(owner):
    client = Client()
    await sync_to_async(client.force_login)(owner)
    page = await sync_to_async(client.get)("/admin/streams/livesession/")
    assert page.status_code == 302
