"""The production shape with SSI: fake FastConnect server, real Redis, daphne,
`runworker` with FEED_SOURCE=ssi, and a real WebSocket client with an API token."""

import asyncio
import datetime as dt
import json
import time

import pytest
import websockets

from apps.accounts.models import ApiToken
from apps.feed import market

from .conftest import Clock
from .fake_hub import FakeHub, trade
from .fake_ssi import CONSUMER_ID, CONSUMER_SECRET, FakeSSI

pytestmark = pytest.mark.e2e


def test_a_client_receives_an_ssi_snapshot_through_daphne_and_redis(processes, owner):
    _, raw = ApiToken.issue(owner, label="e2e-ssi")
    # The worker asks for today's trading date; the fake answers with that day at 10:00,
    # mid-session, whatever the hour the test runs.
    morning = dt.datetime.combine(market.trading_date(market.vn_now()), dt.time(10), tzinfo=market.VN)
    with FakeSSI(now=Clock(morning)) as fake:
        web = processes.daphne()
        worker = processes.worker(
            FEED_SOURCE="ssi",
            SSI_BASE_URL=fake.url,
            SSI_CONSUMER_ID=CONSUMER_ID,
            SSI_CONSUMER_SECRET=CONSUMER_SECRET,
            SSI_MAX_RPS="20",
            FEED_INTERVAL="1",
            SSI_STREAMING="false",  # REST polling alone
            SSI_STREAM_URL="http://127.0.0.1:9/",  # and, were it on, never SSI's hub
        )

        async def first_snapshot():
            headers = {"Authorization": f"Bearer {raw}"}
            async with websockets.connect(f"{web.ws_url}/ws/market", additional_headers=headers, open_timeout=10) as ws:
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if frame["type"] == "snapshot":
                        return welcome, frame

        welcome, snapshot = asyncio.run(first_snapshot())
        assert welcome["type"] == "welcome"
        assert snapshot["stream"] == "market" and snapshot["seq"] >= 1
        assert snapshot["simulated"] is False
        data = snapshot["data"]
        assert len(data["stocks"]) == 30 and all(s["last"] for s in data["stocks"])
        assert data["futures"]["symbol"].startswith("41I1") and data["futures"]["basis"] is not None
        names = {r.name for r in fake.requests}
        assert {"AccessToken", "IndexComponents", "DailyStockPrice", "DailyIndex"} <= names
        assert worker.poll() is None


def test_a_trade_the_hub_sends_reaches_a_client_through_runworker_and_daphne(processes, owner):
    _, raw = ApiToken.issue(owner, label="e2e-hub")
    morning = dt.datetime.combine(market.trading_date(market.vn_now()), dt.time(10), tzinfo=market.VN)
    with FakeSSI(now=Clock(morning)) as fake, FakeHub(fake, keepalive=5.0) as hub:
        web = processes.daphne()
        worker = processes.worker(
            FEED_SOURCE="ssi",
            SSI_BASE_URL=fake.url,
            SSI_STREAM_URL=hub.url,
            SSI_CONSUMER_ID=CONSUMER_ID,
            SSI_CONSUMER_SECRET=CONSUMER_SECRET,
            SSI_MAX_RPS="20",
            FEED_PUBLISH_INTERVAL="1",
            market_now=morning,  # the hub is held in trading hours only
        )

        async def trades_seen():
            headers = {"Authorization": f"Bearer {raw}"}
            async with websockets.connect(f"{web.ws_url}/ws/market", additional_headers=headers, open_timeout=10) as ws:
                frame = {}
                while frame.get("type") != "snapshot":
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert len(frame["data"]["stocks"]) == 30
                deadline = time.monotonic() + 20
                while len(hub.subscribed()) < 5:
                    assert time.monotonic() < deadline, "the worker did not subscribe on the hub"
                    await asyncio.sleep(0.1)
                fpt = next(s for s in frame["data"]["stocks"] if s["symbol"] == "FPT")
                total, delays = fpt["volume"] or 0, []
                for n in range(1, 6):
                    total += 100
                    sent = hub.broadcast("X-TRADE", trade("FPT", 90000 + 100 * n, 100, total, side="BU"))
                    while True:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                        if frame.get("type") != "snapshot":
                            continue
                        seen = next(s for s in frame["data"]["stocks"] if s["symbol"] == "FPT")
                        if seen["volume"] >= total:
                            delays.append(time.time() - sent)
                            assert seen["last"] == 90000 + 100 * n
                            break
                    await asyncio.sleep(0.3)
                return delays

        delays = asyncio.run(trades_seen())
        assert max(delays) < 2.0, delays  # one publish interval (1 s) plus the way through Redis and daphne
        assert fake.calls("AccessToken") and hub.negotiations and hub.switches
        assert worker.poll() is None
