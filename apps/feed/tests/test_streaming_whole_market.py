"""The SSI source for the whole market: a topic subscriber brings every listed
symbol onto the hub links already open, split over links when there are more
than one carries; the universe survives REST failures; a closed market holds
no hub link and serves one REST snapshot of the close; a gap in the hub's
trades flags the active volumes partial. Real Redis, the fake SSI REST server
and the fake hub on loopback."""

import asyncio
import datetime as dt
import json

import pytest

from apps.feed import market
from apps.feed import universe as universes
from apps.feed.runner import Feed
from apps.feed.streaming import StreamingSource
from stocktracker.lib import keys
from stocktracker.lib.state import get_state

from .conftest import Clock, data_calls, ssi_client, subscribe
from .fake_hub import FakeHub, trade
from .test_hub import until

TET_MORNING = dt.datetime(2026, 2, 17, 10, 0, tzinfo=market.VN)  # the third day of Tết 2026: closed


@pytest.fixture
def hub(fake_ssi):
    with FakeHub(fake_ssi, keepalive=1.0) as server:
        yield server


def make_source(fake_ssi, hub, clock, **options):
    return StreamingSource(
        ssi_client(fake_ssi),
        now=clock,
        extra=[],
        futures_override="",
        stream_url=hub.url,
        hub_options={"backoff_base": 0.05},
        **options,
    )


@pytest.fixture
async def source(fake_ssi, hub, clock):
    source = make_source(fake_ssi, hub, clock)
    source.universe_retry = 0.2
    yield source
    await source.aclose()


async def follow_a_topic(conn_id="topic-viewer"):
    assert await get_state().lease_acquire(conn_id, [(keys.TOPIC_SUBSCRIBERS, None)], 60) == 0


async def snapshot(topic):
    raw = await get_state().topic_snapshot(topic)
    return json.loads(raw) if raw else None


def channels(hub, kind):
    """The symbol lists `kind`'s links were sent, in order."""
    return [sub.split(":", 1)[1].split("-") for _, sub in hub.switches if sub.startswith(kind + ":")]


async def cycles_until(feed, condition, timeout=30, what="condition"):
    async def go():
        while not condition():
            await feed.cycle()
            await asyncio.sleep(0.2)

    try:
        await asyncio.wait_for(go(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_a_topic_subscriber_brings_the_whole_market_onto_the_open_links(source, fake_ssi, hub):
    await subscribe("market")
    feed = Feed(source, elect=True)
    await feed.cycle()
    await until(lambda: source.hub.up, what="the VN30 links")
    links = {kind: [c for c in source.hub.channels if c.kind == kind] for kind in ("X-TRADE", "R", "MI")}
    assert len(channels(hub, "X-TRADE")[0]) == 31
    connects = len(hub.connects)
    await follow_a_topic()
    await cycles_until(feed, lambda: source.universe_day and len(channels(hub, "X-TRADE")) == 2, what="a new list")
    await until(lambda: source.hub.up, what="the links acknowledged again")
    # The same links, each sent its whole new list once: no link was restarted.
    assert len(hub.connects) == connects
    assert all([c for c in source.hub.channels if c.kind == k] == v for k, v in links.items())
    whole = channels(hub, "X-TRADE")[-1]
    assert len(whole) == 1823 and {"FPT", "SHS", "ACV", "CFPT2601", "41I2GC000", "41B5GC000"} <= set(whole)
    assert len(channels(hub, "R")[-1]) == 1809  # no foreign room for futures
    assert set(channels(hub, "MI")[-1]) == set(source.universe.indices)
    # Every exchange's prices from REST, then the hub's ticks, reach the topics.
    await cycles_until(feed, lambda: {"stocks:UPCOM", "stocks:HNX", "index:VNFIN"} <= source.have, what="REST")
    await feed.cycle()
    board = await snapshot("board:UPCOM")
    assert len(board["data"]) == 850 and all(row["ref"] for row in board["data"].values())
    acv = board["data"]["ACV"]
    hub.broadcast("X-TRADE", trade("ACV", acv["ref"] + 100, 300, (acv["volume"] or 0) + 300, MarketId="UPCOM"))
    await until(lambda: source.board.rows["ACV"].get("LastPrice") == acv["ref"] + 100, what="the UPCOM trade")
    await feed.cycle()
    assert (await snapshot("quote:ACV"))["data"]["last"] == acv["ref"] + 100
    assert (await snapshot("index:VNFIN"))["data"]["value"] is not None
    assert len((await snapshot("board:FU"))["data"]) == 14
    assert (await snapshot("status"))["data"]["HNX"] == "continuous"


async def test_more_symbols_than_a_link_carries_are_split_over_links(fake_ssi, hub, clock):
    hub.max_symbols = 500  # as a per-key limit would
    source = make_source(fake_ssi, hub, clock, symbols_per_link=500)
    try:
        await follow_a_topic()
        feed = Feed(source, elect=True)
        await cycles_until(feed, lambda: source.universe_day is not None, what="the universe")
        await feed.cycle()
        await until(lambda: source.hub.up, what="every link")
        kinds = [c.kind for c in source.hub.channels]
        assert {k: kinds.count(k) for k in set(kinds)} == {"X-TRADE": 4, "X-QUOTE": 4, "R": 4, "F": 4, "MI": 1}
        covered = {s for c in source.hub.channels if c.kind == "X-TRADE" for s in c.channel.split(":")[1].split("-")}
        assert len(covered) == 1823
    finally:
        await source.aclose()


async def test_a_refused_subscription_shows_as_stale_with_the_hub_s_reason(fake_ssi, hub, clock):
    hub.max_symbols = 500
    source = make_source(fake_ssi, hub, clock)  # 2,000 symbols a link: more than this hub takes
    try:
        await subscribe("market")
        await follow_a_topic()
        feed = Feed(source, elect=True)
        await cycles_until(feed, lambda: feed.feed_state and feed.feed_state[0] == "stale", what="stale")
        assert "Too many symbols: 1823 > 500" in feed.feed_state[1]
        assert not source.hub.up and [c for c in source.hub.channels if c.kind == "MI" and c.up]
    finally:
        await source.aclose()


async def test_the_last_good_universe_serves_through_rest_failures(fake_ssi, hub, clock):
    client = ssi_client(fake_ssi)
    yesterday = await universes.load_universe(client, dt.date(2026, 11, 25))
    await universes.keep(yesterday)
    await client.aclose()
    fake_ssi.reference_down = True
    source = make_source(fake_ssi, hub, clock)
    source.universe_retry = 0.2
    try:
        await follow_a_topic()
        feed = Feed(source, elect=True)
        await cycles_until(feed, lambda: source.universe is not None, what="a universe")
        assert source.universe.day == dt.date(2026, 11, 25) and source.universe_day is None
        await cycles_until(feed, lambda: source.universe_error is not None, what="a failed load")
        await cycles_until(feed, lambda: "stocks:HNX" in source.have, what="REST prices")
        await feed.cycle()
        assert len((await snapshot("board:HNX"))["data"]) == 300  # topics from yesterday's universe
        fake_ssi.reference_down = False
        await cycles_until(feed, lambda: source.universe_day == dt.date(2026, 11, 26), what="today's universe")
        assert (await universes.last_good()).day == dt.date(2026, 11, 26)
    finally:
        await source.aclose()


async def test_a_closed_market_holds_no_hub_link_and_serves_one_snapshot_of_the_close(fake_ssi, hub, clock):
    clock.moment = TET_MORNING
    source = make_source(fake_ssi, hub, clock)
    try:
        await subscribe("market")
        await subscribe("index", conn_id="viewer-i")
        await follow_a_topic()
        feed = Feed(source, elect=True)
        await cycles_until(feed, lambda: source.universe_day is not None and "index:VNFIN" in source.have)
        first = len(data_calls(fake_ssi))
        assert first > 0  # one snapshot of the last close (13/02/2026)
        for _ in range(5):
            clock.advance(minutes=30)
            await feed.cycle()
            await asyncio.sleep(0.2)
        assert len(data_calls(fake_ssi)) == first and not hub.negotiations and not hub.links
        assert feed.feed_state == ("closed", "")
        stocks = json.loads(await get_state().latest_get("market"))["data"]["stocks"]
        assert len(stocks) == 30 and all(s["last"] for s in stocks)
        assert (await snapshot("board:VN30"))["data"]["FPT"]["last"] is not None
    finally:
        await source.aclose()


async def test_at_the_close_the_links_go_and_one_snapshot_of_the_close_is_taken(fake_ssi, hub):
    clock = Clock(dt.datetime(2026, 11, 26, 14, 55, tzinfo=market.VN))
    fake_ssi.now = clock
    source = make_source(fake_ssi, hub, clock)
    try:
        await subscribe("market")
        feed = Feed(source, elect=True)
        await feed.cycle()
        await until(lambda: source.hub.up, what="the links")
        clock.moment = dt.datetime(2026, 11, 26, 15, 10, tzinfo=market.VN)
        fake_ssi.reset_log()
        await cycles_until(feed, lambda: not hub.links and {"board", "future", "index:VN30"} <= source.closed_have)
        taken = len(data_calls(fake_ssi))
        assert 3 <= taken <= 4  # HOSE, the future, VN30 (a second try at most)
        for _ in range(4):
            clock.advance(minutes=20)
            await feed.cycle()
        assert len(data_calls(fake_ssi)) == taken and not source.hub.running
    finally:
        await source.aclose()


async def test_a_gap_in_the_hub_s_trades_flags_active_volumes_partial_until_the_next_day(source, fake_ssi, hub, clock):
    await subscribe("market")
    feed = Feed(source, elect=True)
    await feed.cycle()
    await until(lambda: source.hub.up, what="the links")
    row = source.board.rows["FPT"]
    total = int(float(row.get("TotalVol") or 0))
    source.board.rows["FPT"].pop("ActivePartial", None)
    source.board.trade_totals["FPT"] = float(total)  # as if every trade of the day had been counted
    hub.broadcast("X-TRADE", trade("FPT", 99000, 100, total + 100, side="BU"))
    await until(lambda: source.board.rows["FPT"].get("ActiveBuyVol") == 100, what="the trade")
    assert not source.board.rows["FPT"].get("ActivePartial")
    hub.drop_all()  # the hub replays nothing: what traded meanwhile is lost to the sums
    await until(lambda: not source.hub.up, what="the drop")
    assert source.board.rows["FPT"]["ActivePartial"] is True
    await until(lambda: source.hub.up, timeout=20, what="the links back")
    hub.broadcast("X-TRADE", trade("FPT", 99100, 100, total + 200, side="BU"))
    await until(lambda: source.board.rows["FPT"].get("ActiveBuyVol") == 200, what="a trade after the gap")
    assert source.board.rows["FPT"]["ActivePartial"] is True
    clock.moment = dt.datetime(2026, 11, 27, 9, 20, tzinfo=market.VN)
    fake_ssi.now = clock
    await feed.cycle()
    assert "ActivePartial" not in source.board.rows.get("FPT", {})


async def test_when_the_last_topic_follower_leaves_no_link_and_no_data_call_remain(source, fake_ssi, hub):
    await follow_a_topic()
    feed = Feed(source, elect=True)
    whole = lambda: channels(hub, "X-TRADE") and len(channels(hub, "X-TRADE")[-1]) == 1823  # noqa: E731
    await cycles_until(feed, lambda: whole() and source.hub.up, what="the whole market")
    await get_state().lease_release("topic-viewer", [keys.TOPIC_SUBSCRIBERS])
    await feed.cycle()
    await until(lambda: not hub.links, what="the links closed")
    fake_ssi.reset_log()
    negotiations = len(hub.negotiations)
    for _ in range(4):
        await feed.cycle()
        await asyncio.sleep(0.3)
    assert data_calls(fake_ssi) == [] and len(hub.negotiations) == negotiations and not hub.links
