"""Faults: Redis down means a quick 1013 for new sockets and a 1013 close for
open ones (never connected-but-silent); data flows again once Redis is back.
SIGTERM closes sockets with 4200 and gives the leases back."""

import asyncio
import signal
import time

import pytest

from stocktracker.lib.state import get_state

from .clients import close_code, connect, fanned_out, outcome, recv_json
from .conftest import publish as shared_publish
from .conftest import publishing as shared_publishing

pytestmark = pytest.mark.django_db(transaction=True)


def publishing(hz=4):
    return shared_publishing(hz, tolerate_errors=True)


async def test_redis_outage_closes_1013_refuses_fast_and_recovers(processes, owner_token, own_redis):
    raw = owner_token[1]
    server = processes.daphne(REDIS_URL=own_redis.url, WS_HEARTBEAT_INTERVAL=2)
    for _ in range(50):  # the stream is well into its day: seq 50
        await shared_publish()
    async with publishing():
        ws = await connect(server.ws_url + "/ws/market", raw)
        assert (await recv_json(ws))["type"] == "welcome"
        await fanned_out(ws, 5)

        own_redis.kill()
        killed = time.monotonic()
        code, _ = await close_code(ws, timeout=15)
        assert code == 1013
        print(f"\nopen socket closed 1013 {time.monotonic() - killed:.1f} s after redis died")
        assert time.monotonic() - killed < 10

        started = time.monotonic()
        result, _ = await outcome(server.ws_url, raw)
        assert result == 1013
        assert time.monotonic() - started < 5

        own_redis.start()
        back = time.monotonic()
        while True:  # a client retrying with a short backoff
            assert time.monotonic() - back < 30
            result, ws = await outcome(server.ws_url, raw)
            if result == "open":
                break
            await asyncio.sleep(0.5)
        # Streaming: a snapshot the fan-out delivered, not only the one sent on connect.
        first, then = await fanned_out(ws, 5)
        took = time.monotonic() - back
        print(f"fan-out again {took:.1f} s after redis came back (seq {first['seq']} -> {then['seq']})")
        await ws.close()


async def test_sigterm_closes_sockets_with_4200_and_releases_the_leases(processes, owner_token):
    token, raw = owner_token
    server = processes.daphne()
    sockets = []
    for _ in range(2):
        result, ws = await outcome(server.ws_url, raw)
        assert result == "open"
        sockets.append(ws)
    assert await get_state().lease_count(f"token:{token.id}") == 2
    server.send_signal(signal.SIGTERM)
    codes = [(await close_code(ws, timeout=10))[0] for ws in sockets]
    assert codes == [4200, 4200]
    server.wait(10)
    assert await get_state().lease_count(f"token:{token.id}") == 0
    assert await get_state().entries() == []
