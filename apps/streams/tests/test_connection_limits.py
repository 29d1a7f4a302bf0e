"""Connection limits per IP, token and user hold across processes (Redis
leases), admit exactly the limit under a race, and free themselves after a
crash within WS_LEASE_TTL."""

import asyncio
import os
import signal
import time

import pytest
from asgiref.sync import sync_to_async

from apps.accounts.models import UserLimits
from stocktracker.lib.state import get_state

from .clients import outcome
from .conftest import closed_with, communicator, frame

pytestmark = pytest.mark.django_db(transaction=True)

RACE_RUNS = int(os.environ.get("LIMIT_RACE_RUNS", "15"))


def _raise_user_cap(user, cap=1000):
    limits = UserLimits.for_user(user)
    limits.max_connections = cap
    limits.save()


async def test_fifty_parallel_connects_over_two_processes_admit_exactly_the_token_limit(processes, owner, issue):
    await sync_to_async(_raise_user_cap)(owner)
    token, raw = await sync_to_async(issue)(max_connections=3)
    servers = [processes.daphne(WS_MAX_CONNECTIONS_PER_IP=1000) for _ in range(2)]
    state = get_state()
    for run in range(RACE_RUNS):
        results = await asyncio.gather(*(outcome(servers[i % 2].ws_url, raw) for i in range(50)))
        admitted = [ws for result, ws in results if result == "open"]
        codes = sorted({result for result, _ in results if result != "open"})
        assert len(admitted) == 3, f"run {run}: {len(admitted)} admitted"
        assert codes == [4100], f"run {run}: {codes}"
        await asyncio.gather(*(ws.close() for ws in admitted))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and await state.lease_count(f"token:{token.id}"):
            await asyncio.sleep(0.05)


async def test_it_closes_4100_over_the_per_ip_limit(owner_token, settings):
    settings.WS_MAX_CONNECTIONS_PER_IP = 2
    open_ones = []
    for _ in range(2):
        comm = communicator(token=owner_token[1], client=("10.1.1.1", 1))
        await comm.connect()
        assert (await frame(comm))["type"] == "welcome"
        open_ones.append(comm)
    extra = communicator(token=owner_token[1], client=("10.1.1.1", 1))
    await extra.connect()
    code, frames = await closed_with(extra)
    assert code == 4100 and frames[0]["message"] == "too many connections for this ip"
    other_ip = communicator(token=owner_token[1], client=("10.1.1.2", 1))
    await other_ip.connect()
    assert (await frame(other_ip))["type"] == "welcome"
    for comm in [*open_ones, other_ip]:
        await comm.disconnect()


async def test_forwarded_for_is_believed_only_from_a_trusted_proxy(owner_token, settings):
    settings.WS_TRUSTED_PROXIES = ["10.9.0.0/16"]
    xff = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.7")]
    trusted = communicator(token=owner_token[1], headers=xff, client=("10.9.1.1", 1))
    untrusted = communicator(token=owner_token[1], headers=xff, client=("10.10.1.1", 1))
    for comm in (trusted, untrusted):
        await comm.connect()
        await frame(comm)
    ips = sorted(info["ip"] for info in await get_state().entries())
    assert ips == ["10.10.1.1", "203.0.113.7"]
    for comm in (trusted, untrusted):
        await comm.disconnect()


async def test_a_killed_process_frees_its_slots_within_the_lease_ttl(processes, owner, issue):
    await sync_to_async(_raise_user_cap)(owner)
    _, raw = await sync_to_async(issue)(max_connections=2)
    ttl = 3
    env = {"WS_LEASE_TTL": ttl, "WS_HEARTBEAT_INTERVAL": 1, "WS_MAX_CONNECTIONS_PER_IP": 100}
    doomed, survivor = processes.daphne(**env), processes.daphne(**env)
    held, ws = [], None
    try:
        for _ in range(2):
            held.append(await outcome(doomed.ws_url, raw))
        assert [result for result, _ in held] == ["open", "open"]
        os.kill(doomed.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        result, _ = await outcome(survivor.ws_url, raw)
        assert result == 4100  # the dead process's leases still count...
        while True:  # ...until they expire (renewed every second: at most `ttl` after the kill)
            result, ws = await outcome(survivor.ws_url, raw)
            if result == "open":
                break
            assert time.monotonic() - killed_at < ttl + 5
            await asyncio.sleep(0.25)
        freed_after = time.monotonic() - killed_at
        # ttl, plus a retry period and a connect's worth of slack on a loaded machine.
        assert freed_after <= ttl + 3
    finally:
        if ws is not None:
            await ws.close()
        for _, sock in held:
            if sock is not None:
                sock.transport.abort()
