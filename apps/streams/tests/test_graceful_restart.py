"""SIGTERM on a web process: not ready first, no new sockets, every socket
closed with 4200 at moments spread over WS_DRAIN_SECONDS, leases given back,
usage flushed, clean exit. Measured with N real clients that reconnect to a
second process at once (the restart timeline is printed)."""

import asyncio
import os
import signal
import time

import httpx
import pytest
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed

from apps.accounts.models import ApiToken, TokenUsage, UserLimits
from stocktracker.lib.state import get_state

from .clients import close_code, connect, recv_json

pytestmark = pytest.mark.django_db(transaction=True)

N = 200
DRAIN_S = 3.0


async def _client(url_a, url_b, raw, opened, record):
    ws = await connect(url_a + "/ws/market", raw)
    assert (await recv_json(ws, 10))["type"] == "welcome"
    opened.set_result(None)
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as exc:
        record["code"] = exc.rcvd.code if exc.rcvd else None
        record["closed"] = time.monotonic()
    async with connect(url_b + "/ws/market", raw) as again:  # 4200: reconnect now
        assert (await recv_json(again, 10))["type"] == "welcome"
        record["reconnected"] = time.monotonic()
        await record["done"].wait()


async def test_sigterm_drains_a_web_process_and_its_clients_come_back_spread_out(processes, owner):
    def make_token():
        UserLimits.objects.filter(user=owner).update(max_connections=3 * N)
        return ApiToken.issue(owner, label="restart", max_connections=2 * N)

    token, raw = await sync_to_async(make_token)()
    env = {"WS_MAX_CONNECTIONS_PER_IP": str(3 * N), "WS_DRAIN_SECONDS": str(DRAIN_S)}
    web_a = await sync_to_async(processes.daphne)(**env)
    web_b = await sync_to_async(processes.daphne)(**env)
    done = asyncio.Event()
    records = [{"done": done} for _ in range(N)]
    tasks = []
    for i in range(0, N, 50):  # connect in batches: a storm of handshakes is not what is measured
        batch = [asyncio.get_running_loop().create_future() for _ in range(50)]
        for record, opened in zip(records[i : i + 50], batch, strict=True):
            tasks.append(asyncio.ensure_future(_client(web_a.ws_url, web_b.ws_url, raw, opened, record)))
        await asyncio.wait_for(asyncio.gather(*batch), 30)
    assert await get_state().lease_count(f"token:{token.pk}") == N

    os.killpg(web_a.pid, signal.SIGTERM)
    sent = time.monotonic()
    async with httpx.AsyncClient() as http:
        ready = await http.get(f"{web_a.http_url}/readyz", timeout=5)
    closed_by_then = sum(1 for r in records if "closed" in r)
    assert ready.status_code == 503 and ready.json()["failed"] == ["draining"]
    assert closed_by_then < N / 2, "readiness must fail before most sockets close"
    async with connect(web_a.ws_url + "/ws/market", raw) as late:  # no new sockets while draining
        assert (await close_code(late))[0] == 4200

    await asyncio.wait_for(_all_back(records), 30)
    exit_code = await sync_to_async(web_a.wait)(timeout=15)
    # The leases of the drained process were given back: only the reconnected
    # sockets count (checked while they are still open).
    leases_after_restart = await get_state().lease_count(f"token:{token.pk}")
    done.set()
    await asyncio.gather(*tasks)

    assert exit_code == 0
    assert {r["code"] for r in records} == {4200}
    first_close = min(r["closed"] for r in records)
    last_close = max(r["closed"] for r in records)
    last_back = max(r["reconnected"] for r in records)
    print(
        f"\nrestart timeline, N={N}, WS_DRAIN_SECONDS={DRAIN_S}: SIGTERM->first close {first_close - sent:.2f} s, "
        f"closes spread over {last_close - first_close:.2f} s, "
        f"first close->last reconnect {last_back - first_close:.2f} s, "
        f"process exit {time.monotonic() - sent:.2f} s after SIGTERM"
    )
    assert last_close - first_close >= DRAIN_S / 2, "closes were not spread"
    # Within one second, at most a fair share (plus slack) of the clients came back.
    per_second = max(sum(1 for r in records if t <= r["closed"] < t + 1) for t in (first_close + k for k in range(3)))
    assert per_second <= 0.6 * N
    assert leases_after_restart == N
    usage = await sync_to_async(TokenUsage.objects.get)(token=token)
    assert usage.connections >= N  # flushed by the draining process on its way out


async def _all_back(records):
    while not all("reconnected" in r for r in records):
        await asyncio.sleep(0.05)
