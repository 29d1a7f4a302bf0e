"""The SSI source with the streaming hub: board state from the hub, REST for the
day's reference data, snapshots and the fallback; real Redis, the fake SSI REST
server and the fake hub on loopback."""

import asyncio
import json
import logging
import random
import time

import pytest

from apps.feed.runner import Feed, make_source
from apps.feed.ssi import SSISource
from apps.feed.streaming import StreamingSource
from stocktracker.lib.state import get_state

from .conftest import data_calls, ssi_client, subscribe, unsubscribe
from .fake_hub import FakeHub, trade
from .test_hub import until


async def latest(stream):
    raw = await get_state().latest_get(stream)
    return json.loads(raw) if raw else None


@pytest.fixture
def hub(fake_ssi):
    with FakeHub(fake_ssi, keepalive=1.0) as server:
        yield server


@pytest.fixture
async def source(fake_ssi, hub, clock):
    source = StreamingSource(
        ssi_client(fake_ssi),
        now=clock,
        extra=[],
        futures_override="",
        stream_url=hub.url,
        hub_options={"backoff_base": 0.05},
    )
    yield source
    await source.aclose()


def stock(frame, symbol):
    return next(s for s in frame["data"]["stocks"] if s["symbol"] == symbol)


async def started(feed, source):
    """First cycle (REST snapshot), then the five hub links up."""
    published = await feed.cycle()
    await until(lambda: source.hub.up, what="the hub links")
    return published


async def test_the_board_starts_from_rest_and_moves_with_the_hub(source, fake_ssi, hub):
    await subscribe("market")
    feed = Feed(source, elect=True)
    assert await started(feed, source) == {"market": 1}
    first = await latest("market")
    assert len(first["data"]["stocks"]) == 30 and all(s["last"] for s in first["data"]["stocks"])
    assert first["data"]["futures"]["last"] is not None
    # exactly the board's symbols: the basket, the future under its REST code, the five indices
    subs = dict(sub.split(":", 1) for _, sub in hub.switches)
    assert set(subs) == {"X-TRADE", "X-QUOTE", "R", "MI", "F"}
    future = first["data"]["futures"]["symbol"]
    assert future in subs["X-TRADE"].split("-") and len(subs["X-TRADE"].split("-")) == 31
    assert set(subs["MI"].split("-")) == {"VNINDEX", "VN30", "HNXIndex", "HNX30", "HNXUpcomIndex"}
    fpt = stock(first, "FPT")
    hub.broadcast("X-TRADE", trade("FPT", fpt["last"] + 100, 500, (fpt["volume"] or 0) + 500, side="BU"))
    hub.broadcast("X-TRADE", trade("FPT", fpt["last"] + 200, 300, (fpt["volume"] or 0) + 800, side="SD"))
    hub.broadcast("X-TRADE", trade("FPT", fpt["last"] + 200, 300, (fpt["volume"] or 0) + 800, side="SD"))  # a repeat
    hub.broadcast("X-TRADE", trade("FPT", fpt["last"] + 200, 100, (fpt["volume"] or 0) + 900, side="ATC"))
    hub.broadcast("X-QUOTE", {"Symbol": "FPT", "BidPrice1": 99300.0, "BidVol1": 1200.0, "AskPrice1": 99400.0})
    hub.broadcast("MI", {"IndexId": "VN30", "IndexValue": 2345.67, "Change": 10.0})
    await until(
        lambda: source.board.rows["FPT"].get("BidVol1") and source.board.indices["VN30"].get("IndexValue") == 2345.67
    )
    assert await feed.cycle() == {"market": 2}
    second = await latest("market")
    assert stock(second, "FPT")["last"] == fpt["last"] + 200
    assert stock(second, "FPT")["volume"] == (fpt["volume"] or 0) + 900
    assert second["data"]["futures"]["vn30"] == 2345.67
    row = source.board.rows["FPT"]
    assert (row["ActiveBuyVol"], row["ActiveSellVol"], row["LastVol"]) == (500, 300, 100.0)
    builds = feed.stats["builds"]
    assert await feed.cycle() == {} and feed.stats["builds"] == builds  # nothing new: nothing built


async def test_with_the_stream_healthy_rest_is_not_asked_for_prices(source, fake_ssi, hub):
    for stream in ("market", "foreign", "index"):
        await subscribe(stream, conn_id=f"viewer-{stream}")
    feed = Feed(source, elect=True)
    await started(feed, source)
    await until(lambda: source.backfilled_day is not None and len(source.fresh) == 7, what="snapshot and back-fill")
    fake_ssi.reset_log()
    for n in range(4):
        hub.broadcast("X-TRADE", trade("ACB", 24500 + 50 * n, 100, 10_000_000 + 100 * n))
        await asyncio.sleep(0.3)
        await feed.cycle()
    assert data_calls(fake_ssi) == []
    assert stock(await latest("market"), "ACB")["last"] == 24650


async def test_a_dropped_stream_turns_the_feed_stale_polls_rest_and_recovers(source, fake_ssi, hub):
    await subscribe("market")
    feed = Feed(source, elect=True)
    await started(feed, source)
    await until(lambda: {"board", "future", "index:VN30"} <= source.fresh)
    fake_ssi.reset_log()
    hub.refuse_negotiate(10_000)
    hub.drop_all()
    dropped = time.monotonic()
    while feed.feed_state[0] != "stale":
        assert time.monotonic() - dropped < 5, "not stale within 5 s of the drop"
        await feed.cycle()
        await asyncio.sleep(0.2)
    assert "stream down" in feed.feed_state[1]
    await until(lambda: fake_ssi.calls("DailyStockPrice"), what="REST polling")
    hub._refuse = 0
    await until(lambda: source.hub.up, timeout=40, what="the hub back")
    snapshot_from = len(fake_ssi.calls("DailyStockPrice"))
    await until(lambda: len(fake_ssi.calls("DailyStockPrice")) > snapshot_from, what="a snapshot after the reconnect")
    await feed.cycle()
    assert feed.feed_state == ("live", "")
    assert len(hub.switches) == 10  # every link subscribed again


async def test_a_silent_hub_turns_the_feed_stale_within_a_few_seconds(source, fake_ssi, hub):
    await subscribe("market")
    feed = Feed(source, elect=True)
    await started(feed, source)
    hub.silence()
    silenced = time.monotonic()
    while feed.feed_state[0] != "stale":
        assert time.monotonic() - silenced < 6, "not stale within 6 s of silence (keep-alive timeout 1 s)"
        await feed.cycle()
        await asyncio.sleep(0.2)
    hub.silence(False)
    await until(lambda: source.hub.up, timeout=30)
    await feed.cycle()
    assert feed.feed_state[0] == "live"


async def test_no_subscriber_means_no_hub_link_and_no_rest_and_the_next_one_is_served_at_once(source, fake_ssi, hub):
    await subscribe("market")
    feed = Feed(source, elect=True)
    await started(feed, source)
    await unsubscribe("market")
    assert await feed.cycle() == {}
    await until(lambda: not hub.links, what="the links closed")
    fake_ssi.reset_log()
    negotiations = len(hub.negotiations)
    for _ in range(3):
        await feed.cycle()
        await asyncio.sleep(0.3)
    assert data_calls(fake_ssi) == [] and len(hub.negotiations) == negotiations and not hub.links
    await subscribe("market", conn_id="viewer-2")
    woke = time.monotonic()
    await feed.cycle()
    assert time.monotonic() - woke < 2.0  # the kept board: complete at once, no REST in the way
    assert len((await latest("market"))["data"]["stocks"]) == 30
    await until(lambda: source.hub.up, what="the links back")
    await until(lambda: fake_ssi.calls("DailyStockPrice"), what="a fresh snapshot after the idle period")


async def test_five_thousand_trades_in_a_second_all_count(source, fake_ssi, hub):
    await subscribe("market")
    feed = Feed(source, elect=True)
    await started(feed, source)
    rng = random.Random(5)
    symbols = source._day[1]
    totals = {s: int(float(source.board.rows[s].get("TotalVol") or 0)) for s in symbols}
    expected = {s: [0, 0] for s in symbols}
    messages = []
    for n in range(5000):
        symbol = symbols[n % len(symbols)]
        volume = rng.choice((100, 200, 500, 1000))
        totals[symbol] += volume
        side = ("BU", "SD", "")[n % 3]
        if side:
            expected[symbol][0 if side == "BU" else 1] += volume
        messages.append(("X-TRADE", trade(symbol, 30000 + n % 50 * 50, volume, totals[symbol], side=side)))
    sent = hub.burst(messages, seconds=1.0, per_frame=10)
    started_at = time.monotonic()
    published = 0
    while time.monotonic() - started_at < 4:
        published += "market" in (await feed.cycle() or {})
        await asyncio.sleep(0.25)
    await asyncio.wrap_future(sent)
    assert source.board.messages >= 5000
    for symbol in symbols:
        row = source.board.rows[symbol]
        assert [row.get("ActiveBuyVol", 0), row.get("ActiveSellVol", 0)] == expected[symbol], symbol
        assert int(float(row["TotalVol"])) == totals[symbol]
    frame = await latest("market")
    assert all(stock(frame, s)["volume"] == totals[s] for s in symbols)
    assert published >= 2


async def test_the_sparkline_is_back_filled_from_intraday_bars(source, fake_ssi, hub):
    await subscribe("index")
    feed = Feed(source, elect=True)
    await started(feed, source)
    await until(lambda: source.backfilled_day is not None, what="the back-fill")
    hub.broadcast("MI", {"IndexId": "VNINDEX", "IndexValue": 1700.0})
    await until(lambda: source.board.indices["VNINDEX"].get("IndexValue") == 1700.0)
    await feed.cycle()
    frame = await latest("index")
    assert len(fake_ssi.calls("IntradayOhlc")) == 5
    for entry in frame["data"]["indices"]:
        # 09:00 to 10:00 on the 5-minute grid, less nothing: about a dozen points, then the current value
        assert len(entry["points"]) >= 10, entry["code"]
    vnindex = next(e for e in frame["data"]["indices"] if e["code"] == "VNINDEX")
    assert vnindex["points"][-1][1] == 1700.0


async def test_a_normal_rest_cycle_is_not_logged_as_slow(fake_ssi, clock, caplog, settings):
    settings.FEED_INTERVAL = 2.0
    await subscribe("market")
    await subscribe("index", conn_id="viewer-i")
    source = SSISource(ssi_client(fake_ssi, max_rps=4), now=clock, extra=[], futures_override="")
    feed = Feed(source, elect=True)
    await feed.cycle()  # the day's reference data
    with caplog.at_level(logging.WARNING, logger="apps.feed"):
        started_at = time.monotonic()
        clock.advance(seconds=5)
        await feed.timed_cycle()
        took = time.monotonic() - started_at
    assert took > source.interval() / 2  # what used to be logged as slow
    assert "slow feed cycle" not in caplog.text
    await source.aclose()


def test_ssi_streaming_false_keeps_rest_polling_alone(settings):
    settings.FEED_SOURCE = "ssi"
    settings.SSI_STREAMING = False
    assert type(make_source()) is SSISource
    settings.SSI_STREAMING = True
    assert type(make_source()) is StreamingSource


async def test_extras_off_hose_carry_their_exchange_with_the_hub_too(fake_ssi, hub, clock):
    source = StreamingSource(
        ssi_client(fake_ssi),
        now=clock,
        extra=["DGC", "SHS", "ACV"],
        futures_override="",
        stream_url=hub.url,
        hub_options={"backoff_base": 0.05},
    )
    try:
        await subscribe("market")
        await started(Feed(source, elect=True), source)
        extras = {s["symbol"]: s["exchange"] for s in (await latest("market"))["data"]["stocks"][30:]}
        assert extras == {"DGC": "HOSE", "SHS": "HNX", "ACV": "UPCOM"}
    finally:
        await source.aclose()
