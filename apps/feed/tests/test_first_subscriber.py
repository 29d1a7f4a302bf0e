"""The first subscriber after a worker start waits only for data.

With nobody subscribed the worker makes no SSI data call and holds no hub
subscription, but it does hold the access token and the day's reference data
(VN30 basket, front-month future): they are not data calls. So a first
subscriber's complete `market` snapshot needs only its three data calls
(HOSE board, the future, VN30), one SSI_MAX_RPS slot apart, on both the REST
and the hub path. Real runworker and daphne, the fake SSI and hub over real
sockets, every SSI setting at its default but the URLs.
"""

import asyncio
import datetime as dt
import json
import time

import pytest
import websockets
from django.conf import settings

from apps.accounts.models import ApiToken
from apps.feed import market

from .conftest import Clock
from .fake_hub import FakeHub
from .fake_ssi import CONSUMER_ID, CONSUMER_SECRET, FakeSSI

pytestmark = pytest.mark.e2e

NOT_DATA = {"AccessToken", "IndexComponents", "SecuritiesDetails"}
MARKET_DATA_CALLS = 3  # DailyStockPrice HOSE, DailyStockPrice DER, DailyIndex VN30


def _log(proc):
    return proc.log_path.read_text()


@pytest.mark.parametrize("path", ["rest", "hub"])
def test_the_first_subscriber_after_a_worker_start_waits_only_for_its_data_calls(processes, owner, path):
    _, raw = ApiToken.issue(owner, label="first")
    morning = dt.datetime.combine(market.trading_date(market.vn_now()), dt.time(10), tzinfo=market.VN)
    with FakeSSI(now=Clock(morning)) as fake, FakeHub(fake, keepalive=5.0) as hub:
        web = processes.daphne()
        env = {
            "FEED_SOURCE": "ssi",
            "SSI_BASE_URL": fake.url,
            "SSI_STREAM_URL": hub.url,
            "SSI_CONSUMER_ID": CONSUMER_ID,
            "SSI_CONSUMER_SECRET": CONSUMER_SECRET,
            "SSI_STREAMING": "true" if path == "hub" else "false",
        }
        worker = processes.worker(market_now=morning, **env)  # the hub is held in trading hours only
        deadline = time.monotonic() + 30
        while "feed is " not in _log(worker):  # the leader's first (idle) cycle
            assert time.monotonic() < deadline and worker.poll() is None, _log(worker)
            time.sleep(0.1)
        time.sleep(4)  # nobody subscribes for a while
        before = [r.name for r in fake.requests]
        assert set(before) <= NOT_DATA, f"data calls with no subscriber: {before}"
        assert not hub.negotiations and not hub.subscribed(), "a hub link with no subscriber"
        fake.reset_log()

        async def first_snapshot():
            started = time.monotonic()
            headers = {"Authorization": f"Bearer {raw}"}
            async with websockets.connect(f"{web.ws_url}/ws/market", additional_headers=headers) as ws:
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if frame["type"] == "snapshot":
                        return time.monotonic() - started, frame

        took, snapshot = asyncio.run(first_snapshot())
        after = [r.name for r in fake.requests]
        stocks = snapshot["data"]["stocks"]
        assert len(stocks) == 30 and all(s["last"] for s in stocks) and snapshot["data"]["futures"]["basis"] is not None
        spacing = 1 / settings.SSI_MAX_RPS
        print(f"\n{path}: first complete market snapshot {took:.2f} s after connecting "
              f"(SSI_MAX_RPS={settings.SSI_MAX_RPS}; calls before: {before}; after: {after[:5]})")  # fmt: skip
        # Its data calls, one budget slot apart, and the way through Redis and daphne.
        assert took < (MARKET_DATA_CALLS - 1) * spacing + 1.0, f"first snapshot after {took:.2f} s"
        assert sorted(after[:MARKET_DATA_CALLS]) == ["DailyIndex", "DailyStockPrice", "DailyStockPrice"], after
        assert worker.poll() is None
