"""One feed cycle, called directly: publish on change, seq in Redis, zero-cost idle, failures."""

import asyncio
import json
import logging
from unittest.mock import ANY

import pytest

from apps.feed import payloads
from apps.feed.leadership import LOCK_KEY
from apps.feed.payloads import FeedData
from apps.feed.runner import Feed
from apps.feed.simulator import SimulatorSource
from apps.streams.protocol import epoch_day
from stocktracker.lib.keys import WAKE_CHANNEL
from stocktracker.lib.state import get_state

from .conftest import ssi_client, subscribe, unsubscribe
from .fake_ssi import CONSUMER_ID, CONSUMER_SECRET


async def latest(stream):
    raw = await get_state().latest_get(stream)
    return json.loads(raw) if raw else None


def simulator_feed(clock, **kwargs):
    return Feed(SimulatorSource(clock="wall", seed=11, now=clock), **kwargs)


async def test_with_no_subscriber_a_cycle_asks_ssi_for_no_data_and_serializes_nothing(ssi_source, fake_ssi):
    feed = Feed(ssi_source, elect=True)
    assert await feed.cycle() == {}
    # Ready for a first subscriber: the token and the day's reference data, no data call.
    assert [r.name for r in fake_ssi.requests] == ["AccessToken", "IndexComponents", "SecuritiesDetails"]
    fake_ssi.reset_log()
    for _ in range(3):
        assert await feed.cycle() == {}
    assert fake_ssi.requests == []  # held: idle cycles ask nothing more
    assert feed.stats["builds"] == 0 and feed.stats["published"] == 0
    for stream in ("market", "foreign", "index"):
        assert await latest(stream) is None
    feed_state = await get_state().feed_get()  # readiness still sees a working feed
    assert feed_state["heartbeat_ms"] > 0 and feed_state["state"] == "live"


async def test_a_subscribed_stream_is_published_and_stored_as_the_latest_frame(ssi_source, fake_ssi):
    await subscribe("market")
    published = await Feed(ssi_source, elect=True).cycle()
    assert published == {"market": 1}
    frame = await latest("market")
    assert (frame["type"], frame["stream"], frame["seq"]) == ("snapshot", "market", 1)
    assert epoch_day(frame["epoch"]) == "2026-11-26"
    assert frame["feed"] == "live" and frame["simulated"] is False
    assert len(frame["data"]["stocks"]) == 30 and frame["data"]["futures"]["basis"] is not None
    assert await latest("foreign") is None and await latest("index") is None


async def test_an_idle_feed_renews_the_token_before_it_expires_and_fetches_a_new_days_reference_data(
    fake_ssi, clock, settings
):
    from apps.feed.ssi import SSIClient, SSISource

    now = [1_000_000.0]
    client = SSIClient(
        base_url=fake_ssi.url, consumer_id=CONSUMER_ID, consumer_secret=CONSUMER_SECRET, max_rps=50,
        clock=lambda: now[0],
    )  # fmt: skip
    feed = Feed(SSISource(client, now=clock, extra=[], futures_override=""), elect=True)
    await feed.cycle()
    fake_ssi.reset_log()
    now[0] = client.refresh_at + 1  # the token is about to expire
    await feed.cycle()
    assert [r.name for r in fake_ssi.requests] == ["AccessToken"]
    fake_ssi.reset_log()
    clock.advance(days=1)  # Friday: a new trading day
    await feed.cycle()
    assert [r.name for r in fake_ssi.requests] == ["IndexComponents", "SecuritiesDetails"]


async def test_a_failing_preparation_is_logged_and_the_idle_feed_carries_on(ssi_source, fake_ssi, caplog):
    feed = Feed(ssi_source, elect=True)
    fake_ssi.fail("invalid_key", on="token")
    with caplog.at_level(logging.WARNING, logger="apps.feed"):
        assert await feed.cycle() == {}
    assert "could not prepare for the first subscriber: SSIError" in caplog.text
    assert feed.feed_state[0] in ("live", "closed") and feed.failures == 0


async def test_only_what_subscribed_streams_need_is_fetched(ssi_source, fake_ssi):
    await subscribe("market")
    await Feed(ssi_source, elect=True).cycle()
    names = [r.name for r in fake_ssi.requests]
    assert names == ["AccessToken", "IndexComponents", "SecuritiesDetails", "DailyStockPrice", "DailyStockPrice",
                     "DailyIndex"]  # fmt: skip
    assert fake_ssi.calls("DailyIndex")[0].params["indexid"] == "VN30"  # for the basis only


async def test_a_full_cycle_costs_seven_requests_once_the_day_is_resolved(ssi_source, fake_ssi, clock):
    for stream in ("market", "foreign", "index"):
        await subscribe(stream, conn_id=f"viewer-{stream}")
    feed = Feed(ssi_source, elect=True)
    await feed.cycle()
    fake_ssi.reset_log()
    clock.advance(seconds=10)
    assert set(await feed.cycle()) == {"market", "foreign", "index"}
    names = sorted(r.name for r in fake_ssi.requests)
    assert names == ["DailyIndex"] * 5 + ["DailyStockPrice"] * 2


async def test_unchanged_data_is_not_published_again(clock):
    await subscribe("index")
    feed = simulator_feed(clock, elect=True)
    assert await feed.cycle() == {"index": 1}
    assert await feed.cycle() == {}
    clock.advance(minutes=2)
    assert await feed.cycle() == {"index": 2}
    assert (await latest("index"))["seq"] == 2


async def test_the_sequence_survives_a_worker_restart(clock):
    await subscribe("foreign")
    first = simulator_feed(clock, elect=True)
    await first.cycle()
    clock.advance(minutes=1)
    assert await first.cycle() == {"foreign": 2}
    await first.leader.release()
    restarted = simulator_feed(clock, elect=True)  # a new process: no memory of what was sent
    assert await restarted.cycle() == {"foreign": 3}


async def test_a_new_trading_day_is_a_new_epoch_starting_at_seq_1(clock):
    await subscribe("market")
    feed = simulator_feed(clock, elect=True)
    await feed.cycle()
    clock.advance(minutes=5)
    await feed.cycle()
    clock.advance(days=1)
    assert await feed.cycle() == {"market": 1}
    assert epoch_day((await latest("market"))["epoch"]) == "2026-11-27"


async def test_a_closed_market_publishes_the_closed_feed_state(clock):
    clock.advance(hours=8)  # 18:00
    await subscribe("market")
    await simulator_feed(clock, elect=True).cycle()
    assert (await get_state().feed_get())["state"] == "closed"
    frame = await latest("market")
    assert frame["feed"] == "closed" and frame["data"]["phase"] == "closed"


async def test_a_failing_cycle_marks_the_feed_stale_and_the_next_good_one_makes_it_live(fake_ssi, clock, caplog):
    from apps.feed.ssi import SSISource

    source = SSISource(ssi_client(fake_ssi, retries=0), now=clock, extra=[], futures_override="")
    await subscribe("index")
    feed = Feed(source, elect=True)
    await feed.cycle()
    fake_ssi.fail("500")
    clock.advance(seconds=10)
    assert await feed.safe_cycle() is None
    feed_state = await get_state().feed_get()
    assert feed_state["state"] == "stale" and "500" in feed_state["detail"]
    assert "feed cycle failed" in caplog.text
    clock.advance(seconds=10)
    assert await feed.safe_cycle() == {"index": 2}
    assert (await get_state().feed_get())["state"] == "live"


async def test_a_rejected_consumer_key_marks_the_feed_down(fake_ssi, clock):
    from apps.feed.ssi import SSISource

    source = SSISource(ssi_client(fake_ssi), now=clock, extra=[], futures_override="")
    fake_ssi.fail("invalid_key", on="token")
    await subscribe("index")
    assert await Feed(source, elect=True).safe_cycle() is None
    assert (await get_state().feed_get())["state"] == "down"


async def test_a_slow_cycle_is_logged_with_its_duration(fake_ssi, clock, caplog, settings):
    from apps.feed.ssi import SSISource

    settings.FEED_INTERVAL = 1.0
    source = SSISource(ssi_client(fake_ssi, max_rps=1000), now=clock, extra=[], futures_override="")
    await subscribe("index")
    fake_ssi.fail("timeout", delay=0.6)  # answers slowly, within the client's timeout
    with caplog.at_level(logging.WARNING, logger="apps.feed"):
        await Feed(source, elect=True).timed_cycle()
    assert "slow feed cycle" in caplog.text


async def test_a_standby_neither_fetches_nor_publishes(ssi_source, fake_ssi):
    await get_state().redis.set(LOCK_KEY, "another-worker", px=15_000)
    await subscribe("market")
    feed = Feed(ssi_source, elect=True)
    assert await feed.cycle() is None
    assert fake_ssi.requests == [] and await latest("market") is None


async def test_a_leader_whose_lock_was_taken_stops_publishing(clock):
    await subscribe("index")
    feed = simulator_feed(clock, elect=True)
    assert await feed.cycle() == {"index": 1}
    await get_state().redis.set(LOCK_KEY, "another-worker", px=15_000)
    clock.advance(minutes=3)
    assert await feed.cycle() is None
    assert (await latest("index"))["seq"] == 1


async def test_embedded_mode_is_always_the_leader(embedded, clock):
    await subscribe("market")
    assert await simulator_feed(clock, elect=True).cycle() == {"market": 1}


async def test_a_new_leader_keeps_the_days_sparkline(ssi_source, fake_ssi, clock):
    await subscribe("index")
    first = Feed(ssi_source, elect=True)
    for _ in range(3):
        await first.cycle()
        clock.advance(minutes=5)
    points = (await latest("index"))["data"]["indices"][1]["points"]
    assert len(points) == 3
    await first.leader.release()
    second = Feed(ssi_source, elect=True)
    await second.cycle()
    carried = (await latest("index"))["data"]["indices"][1]["points"]
    assert carried[:3] == points and len(carried) == 4


class ObservedFeed(Feed):
    """A Feed that tells the test when each cycle finished."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cycled = asyncio.Queue()

    async def safe_cycle(self):
        result = await super().safe_cycle()
        await self.cycled.put(result)
        return result


async def test_the_first_subscriber_wakes_the_worker_at_once(clock, settings):
    from channels.layers import get_channel_layer

    settings.FEED_INTERVAL = 3600  # the next regular cycle is an hour away
    feed = ObservedFeed(SimulatorSource(clock="wall", seed=11, now=clock), elect=True)
    stop = asyncio.Event()
    loop = asyncio.ensure_future(feed.run(stop))
    try:
        assert await asyncio.wait_for(feed.cycled.get(), 5) == {}  # idle: nobody watches
        await subscribe("market")
        await asyncio.sleep(0.2)  # let the listener's SUBSCRIBE reach Redis
        await get_channel_layer().send(WAKE_CHANNEL, {"type": "feed.wake"})
        assert await asyncio.wait_for(feed.cycled.get(), 3) == {"market": 1}
    finally:
        stop.set()
        await asyncio.wait_for(loop, 5)
    assert await get_state().redis.get(LOCK_KEY) is None  # released on the way out


@pytest.mark.parametrize("stream", ["market", "foreign", "index"])
async def test_every_stream_serializes_to_json_once_published(clock, stream):
    await subscribe(stream)
    await simulator_feed(clock, elect=True).cycle()
    frame = await latest(stream)
    assert frame["simulated"] is True and frame["data"]["trading_date"] == "2026-11-26"


# --- review fixes ----------------------------------------------------------------------


class StubSource:
    """A source whose `market` payload the test sets directly (see `payload_is`)."""

    simulated = False

    def __init__(self, clock):
        self.now = clock

    async def fetch(self, needs):
        return FeedData(trading_date=self.now().date(), phase="continuous", source_ms=0)

    def interval(self):
        return 1.0

    async def aclose(self):
        pass


@pytest.mark.parametrize("before, after", [(-1, -2), (-1.0, -2.0)])
async def test_a_change_from_minus_1_to_minus_2_is_published(clock, monkeypatch, before, after):
    # hash(-1) == hash(-2) in CPython: a hash-only comparison never publishes this change.
    basis = [before]
    monkeypatch.setitem(payloads.BUILDERS, "market", lambda data: {"futures": {"basis": basis[0]}})
    await subscribe("market")
    feed = Feed(StubSource(clock), elect=True)
    assert await feed.cycle() == {"market": 1}
    basis[0] = after
    assert await feed.cycle() == {"market": 2}
    assert (await latest("market"))["data"]["futures"]["basis"] == after
    assert await feed.cycle() == {}  # and unchanged data is still not published again


async def test_an_idle_feed_follows_the_market_clock_and_publishes_only_changes(clock, monkeypatch):
    from apps.feed import runner

    published = []
    real = runner.publish_feed_state

    async def spy(name, **kwargs):
        published.append(name)
        return await real(name, **kwargs)

    monkeypatch.setattr(runner, "publish_feed_state", spy)
    feed = simulator_feed(clock, elect=True)
    assert await feed.cycle() == {}  # 10:00, nobody subscribed
    assert (await get_state().feed_get())["state"] == "live"
    clock.advance(hours=1)
    assert await feed.cycle() == {}
    clock.advance(hours=6)  # 17:00: the market closed while nobody watched
    assert await feed.cycle() == {}
    assert (await get_state().feed_get())["state"] == "closed"
    assert published == ["live", "closed"]
    assert feed.stats["fetches"] == 0 and feed.stats["builds"] == 0


async def test_an_idle_cycle_ends_the_backoff_of_earlier_failures(fake_ssi, clock):
    from apps.feed.ssi import SSISource

    source = SSISource(ssi_client(fake_ssi, retries=0), now=clock, extra=[], futures_override="")
    await subscribe("index")
    feed = Feed(source, elect=True)
    fake_ssi.fail("500")
    assert await feed.safe_cycle() is None
    assert feed.failures == 1 and (await get_state().feed_get())["state"] == "stale"
    await unsubscribe("index")
    assert await feed.safe_cycle() == {}
    assert feed.failures == 0 and feed.failing_since is None
    assert feed.next_interval() == source.interval()  # no jitter left over
    assert (await get_state().feed_get())["state"] == "live"


async def test_a_cycle_leaves_lock_and_heartbeat_to_the_keeper_and_counts_subscribers_at_once(clock, monkeypatch):
    await subscribe("index")
    feed = simulator_feed(clock, elect=True)
    assert await feed.cycle() == {"index": 1}  # takes the lock and touches the heartbeat
    state = get_state()
    calls = {"touch": 0, "reacquire": 0, "lease_counts": 0}

    def counting(name, real):
        async def wrapper(*args, **kwargs):
            calls[name] += 1
            return await real(*args, **kwargs)

        return wrapper

    async def one_by_one(key):
        raise AssertionError("subscribers are counted in one round trip")

    monkeypatch.setattr(state, "feed_touch", counting("touch", state.feed_touch))
    monkeypatch.setattr(state, "lease_counts", counting("lease_counts", state.lease_counts))
    monkeypatch.setattr(state, "lease_count", one_by_one)
    monkeypatch.setattr(feed.leader.lock, "extend", counting("reacquire", feed.leader.lock.extend))
    for _ in range(3):
        clock.advance(minutes=5)
        assert await feed.cycle() == {"index": ANY}
    assert calls == {"touch": 0, "reacquire": 0, "lease_counts": 3}
    # Without a keeper (as here) a cycle still renews and touches once they are due.
    feed.leader.renewed -= 60
    feed.touched -= 60
    await feed.cycle()
    assert calls == {"touch": 1, "reacquire": 1, "lease_counts": 4}


async def test_a_cycle_parses_each_stock_row_once(clock, monkeypatch):
    for stream in ("market", "foreign", "index"):
        await subscribe(stream, conn_id=f"viewer-{stream}")
    parsed = []
    real = payloads.stock
    monkeypatch.setattr(payloads, "stock", lambda raw: parsed.append(raw) or real(raw))
    feed = simulator_feed(clock, elect=True)
    fetched = []
    fetch = feed.source.fetch

    async def spy(needs):
        fetched.append(await fetch(needs))
        return fetched[-1]

    feed.source.fetch = spy
    assert set(await feed.cycle()) == {"market", "foreign", "index"}
    assert len(parsed) == len(fetched[0].stocks) > 30


async def test_extra_symbols_off_hose_are_found_once_a_day_and_only_they_cost_a_request(fake_ssi, clock):
    from apps.feed.ssi import SSISource

    source = SSISource(ssi_client(fake_ssi), now=clock, extra=["DGC", "SHS"], futures_override="")
    await subscribe("market")
    feed = Feed(source, elect=True)
    assert source.requests_per_cycle() == 9  # until the day's HOSE board is seen, every extra counts
    await feed.cycle()
    assert source.requests_per_cycle() == 8  # DGC is on the HOSE board; SHS (HNX) is not
    fake_ssi.reset_log()
    clock.advance(seconds=10)
    await feed.cycle()
    asked = sorted(c.params.get("symbol", "") for c in fake_ssi.calls("DailyStockPrice"))
    assert asked == sorted(["", source._day[2].symbol, "SHS"])  # HOSE board, the future, SHS: not DGC
    stocks = (await latest("market"))["data"]["stocks"]
    assert [s["symbol"] for s in stocks[30:]] == ["DGC", "SHS"]
    assert all(s["last"] for s in stocks[30:])
    assert source._off_hose == (clock().date(), ["SHS"])
