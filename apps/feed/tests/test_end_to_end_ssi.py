"""The production shape with SSI: fake FastConnect server, real Redis, daphne,
`runworker` with FEED_SOURCE=ssi, and a real WebSocket client with an API token."""

import asyncio
import datetime as dt
import json

import pytest
import websockets

from apps.accounts.models import ApiToken
from apps.feed import market

from .conftest import Clock
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
