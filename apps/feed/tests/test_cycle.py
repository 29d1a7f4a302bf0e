"""One feed cycle, called directly: publish on change, seq in Redis, zero-cost idle, failures."""

import asyncio
import json
import logging

import pytest

from apps.feed.runner import LOCK_KEY, WAKE_CHANNEL, Feed
from apps.feed.simulator import SimulatorSource
from apps.streams.state import get_state

from .conftest import ssi_client, subscribe


async def latest(stream):
    raw = await get_state().latest_get(stream)
    return json.loads(raw) if raw else None


def simulator_feed(clock, **kwargs):
    return Feed(SimulatorSource(clock="wall", seed=11, now=clock), **kwargs)


async def test_with_no_subscriber_a_cycle_asks_ssi_nothing_and_serializes_nothing(ssi_source, fake_ssi):
    feed = Feed(ssi_source, elect=True)
    assert await feed.cycle() == {}
    assert fake_ssi.requests == []
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
    assert (frame["type"], frame["stream"], frame["seq"], frame["epoch"]) == ("snapshot", "market", 1, "2026-11-26")
    assert frame["feed"] == "live" and frame["simulated"] is False
    assert len(frame["data"]["stocks"]) == 30 and frame["data"]["futures"]["basis"] is not None
    assert await latest("foreign") is None and await latest("index") is None


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
    assert (await latest("market"))["epoch"] == "2026-11-27"


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
