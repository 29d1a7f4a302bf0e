"""The production shape, end to end: daphne and `manage.py runworker` as real
processes on real Redis and PostgreSQL, real WebSocket clients."""

import asyncio
import json
import time
import urllib.request

import pytest
import websockets

from apps.accounts.models import ApiToken
from apps.streams.protocol import STREAMS
from conftest import WORKER_ENV

pytestmark = pytest.mark.e2e


async def first_snapshot(url, token):
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if frame["type"] == "snapshot":
                return welcome, frame


def get_json(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test server
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_each_stream_delivers_a_snapshot_from_the_worker_through_redis(processes, owner):
    _, raw = ApiToken.issue(owner, label="e2e")
    web = processes.daphne()
    processes.worker(**WORKER_ENV)

    async def main():
        return await asyncio.gather(*(first_snapshot(f"{web.ws_url}/ws/{stream}", raw) for stream in STREAMS))

    results = asyncio.run(main())
    for stream, (welcome, snapshot) in zip(STREAMS, results, strict=True):
        assert welcome["type"] == "welcome" and welcome["stream"] == stream
        assert snapshot["stream"] == stream
        assert snapshot["seq"] >= 1
        assert snapshot["simulated"] is True
        assert snapshot["data"], f"{stream} snapshot has no data"
    market = results[0][1]["data"]
    assert len(market["stocks"]) == 30
    index_codes = {row["code"] for row in results[2][1]["data"]["indices"]}
    assert index_codes == {"VNINDEX", "VN30", "HNXIndex", "HNX30", "HNXUpcomIndex"}

    deadline = time.monotonic() + 15
    status, body = get_json(f"{web.http_url}/status")
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
        status, body = get_json(f"{web.http_url}/status")
    assert status == 200, body


def test_a_wrong_token_is_refused_with_4001_and_a_reason(processes, owner):
    ApiToken.issue(owner, label="real")
    web = processes.daphne()

    async def main():
        async with websockets.connect(
            f"{web.ws_url}/ws/market", additional_headers={"Authorization": "Bearer stk_wrong"}
        ) as ws:
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return error, closed.value.rcvd

    error, close = asyncio.run(main())
    assert error["type"] == "error" and error["code"] == "auth_failed"
    assert close.code == 4001


def test_web_processes_never_poll_in_redis_mode(processes, owner):
    """Without a worker, nothing publishes: the web process does not run the feed."""
    _, raw = ApiToken.issue(owner, label="idle")
    web = processes.daphne()

    async def main():
        async with websockets.connect(
            f"{web.ws_url}/ws/market", additional_headers={"Authorization": f"Bearer {raw}"}
        ) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(asyncio.TimeoutError):
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 3))
                    assert frame["type"] != "snapshot", "a web process published a snapshot"
            return welcome

    assert asyncio.run(main())["type"] == "welcome"
    status, body = get_json(f"{web.http_url}/status")
    assert status == 503 and body["failed"] == ["feed"]
