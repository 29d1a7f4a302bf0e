"""The feed loop: one cycle at a time, only on the leader, only for subscribed streams.

`Feed.cycle()` is the unit a test calls: make sure of the leader lock and the
heartbeat (free when the `_keep` task renewed them lately), count subscribers
(one round trip), fetch what they need, build each payload, publish those that
changed (checking the lock before each publish), and report the feed state
when it changes. With no subscriber a cycle only reads the market clock: the
feed state follows it (live/closed) without any upstream data request or
payload; the source may keep what is not data ready (`prepare`: SSI's token
and the day's reference data), so that a first subscriber waits only for data.
`run_feed()` is a thin loop around it: short sleep slices, an early wake on the
`feed-wake` channel, lock renewal and heartbeat in `_keep` (also during a long
cycle or a long idle sleep), and a clean release of the lock on stop. Behind
Sentinel, `_follow` moves the worker's connections to each new master.

Who leads is `leadership`; the intraday history the builders need is
`history`. The feed never touches the database, so it has no connections
to recycle.
"""

import asyncio
import logging
import math
import random
import time

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from apps.streams.publish import Fenced, publish_feed_state, publish_snapshot, publish_topic
from stocktracker.lib import catalogue, keys
from stocktracker.lib import redis as redis_lib
from stocktracker.lib.aio import running
from stocktracker.lib.state import StateUnavailable, get_state

from . import market, metrics
from .history import IntradayHistory
from .leadership import Leadership
from .payloads import BUILDERS, fingerprint
from .topics import TopicBook

log = logging.getLogger("apps.feed")

SLICE_S = 0.5  # sleep granularity: how fast a stop or a wake is noticed
STANDBY_RETRY_S = 1.0
TOUCH_EVERY_S = 5.0
TOPIC_BATCH = 64  # topic publishes in flight at once (one Redis script and one PUBLISH each)
DOWN_AFTER_S = 300.0  # failing this long (or unrecoverably) turns stale into down
BACKOFF_CAP_S = 60.0
FOLLOW_EVERY_S = 1.0  # behind Sentinel: how often the worker asks where the master is
# Failing on Redis (the shared state or the channel layer), not upstream: come
# back within seconds of Redis doing so, not after minutes of backoff.
REDIS_BACKOFF_CAP_S = 2.0


def make_source():
    if settings.FEED_SOURCE == "ssi":
        if settings.SSI_STREAMING:
            from .streaming import StreamingSource

            return StreamingSource()
        from .ssi import SSISource

        return SSISource()
    from .simulator import SimulatorSource

    return SimulatorSource()


class Feed:
    def __init__(self, source=None, *, elect=False):
        self.source = source or make_source()
        self.leader = Leadership(elect)
        self.fingerprints = {}
        self.positions = {}  # stream or topic -> (epoch, seq) this process last published: the floor of the next
        self.topics = None  # TopicBook of the source's universe, once it has one
        self.term = 0
        self.feed_state = None  # (state, detail) last published by this process
        self.history = IntradayHistory()
        self.failures = 0
        self.failing_since = None
        self.redis_failed = False  # the last failure was Redis's, not the source's
        self.touched = -math.inf  # monotonic time of the last heartbeat
        self.wake = asyncio.Event()
        self.stats = {"cycles": 0, "idle": 0, "fetches": 0, "unchanged": 0, "builds": 0, "published": 0}
        self.last_data = None  # the FeedData the last cycle built from
        self.master = None  # behind Sentinel: (host, port) of the master they named last

    # --- one cycle -------------------------------------------------------------------

    async def touch(self, force=False):
        """The heartbeat readiness reads, at most once per TOUCH_EVERY_S unless forced."""
        if force or time.monotonic() - self.touched >= TOUCH_EVERY_S:
            await get_state().feed_touch()
            self.touched = time.monotonic()

    async def cycle(self):
        """Run one cycle; returns {stream: seq} of what it published (None when not leading)."""
        state = get_state()
        if not await self.leader.ensure(renew=False):
            return None
        await self.touch()
        if self.leader.terms != self.term:
            # Another process may have published meanwhile: compare against nothing.
            self.term = self.leader.terms
            self.fingerprints.clear()
            if self.topics is not None:
                self.topics.forget()
            self.feed_state = None
        self.stats["cycles"] += 1
        counts = await state.lease_counts([*(keys.subscribers(s) for s in catalogue.STREAMS), keys.TOPIC_SUBSCRIBERS])
        needs = {stream for stream, count in zip(catalogue.STREAMS, counts[:-1], strict=True) if count > 0}
        topics_wanted = counts[-1] > 0
        if not needs and not topics_wanted:
            self.stats["idle"] += 1
            # From the clock alone, every idle cycle (published only when it changes):
            # readiness and connect-time `feed` frames need a current state even
            # while nobody watches. No upstream data request, no payload.
            idle = getattr(self.source, "idle", None)
            if idle is not None:
                await idle()  # a streaming source closes its upstream links
            if not await self.set_feed_state("live" if market.is_open(self.source.now()) else "closed"):
                return None
            self.failures, self.failing_since = 0, None
            self.last_data = None
            await self._prepare()
            return {}  # zero-cost idle: no upstream data request, nothing built or serialized
        want_topics = getattr(self.source, "want_topics", None)
        if want_topics is not None:
            want_topics(topics_wanted)  # the SSI hub then carries the whole market
        data = await self.source.fetch(needs)
        self.stats["fetches"] += 1
        day = data.trading_date.isoformat()
        await self.history.start_day(day)
        take = getattr(self.source, "take_backfill", None)
        if take is not None:
            self.history.seed(take())
        # Any board in a session: the derivatives ATO (08:45) is live before HOSE opens.
        feed = "live" if data.phase in market.OPEN_PHASES or market.is_open(self.source.now()) else "closed"
        degraded = getattr(self.source, "degraded", "")
        shown = ("stale", degraded) if degraded and feed == "live" else (feed, "")
        if not await self.set_feed_state(*shown):
            return None
        if topics_wanted and not await self._publish_topics(day, feed, data):
            return None
        if data is self.last_data and all(stream in self.fingerprints for stream in needs):
            # A streaming source hands back the same data while nothing changed.
            self.stats["unchanged"] += 1
            self.failures, self.failing_since = 0, None
            return {}
        self.last_data = data
        extras = self.history.track(data, needs)
        published = {}
        for stream in catalogue.STREAMS:
            if stream not in needs:
                continue
            payload = BUILDERS[stream](data, *extras.get(stream, ()))
            self.stats["builds"] += 1
            mark = fingerprint(payload)
            if mark == self.fingerprints.get(stream):  # equality of the data itself, not of a hash
                continue
            if not await self.leader.still_held():
                log.warning("not publishing %s: no longer the leader", stream)
                return None
            try:
                position = await publish_snapshot(
                    stream,
                    payload,
                    day=day,
                    source_ms=data.source_ms,
                    feed=feed,
                    simulated=data.simulated,
                    fence=self.leader.fence(),
                    floor=self.positions.get(stream),
                )
            except Fenced:
                self._fenced(stream)
                return None
            self.positions[stream] = position
            published[stream] = position[1]
            self.fingerprints[stream] = mark
            self.stats["published"] += 1
        self.failures, self.failing_since = 0, None
        return published

    async def _publish_topics(self, day, feed, data):
        """Publish every topic that changed since the last cycle (its snapshot
        and its delta), when the source keeps a whole-market board. False when
        fenced."""
        universe, board = getattr(self.source, "universe", None), getattr(self.source, "board", None)
        if universe is None or board is None:
            return True
        if self.topics is None or self.topics.universe is not universe:
            self.topics = TopicBook(universe)  # a new day's universe: every topic starts from its snapshot
            board.take_dirty()
            symbols, indices = set(board.rows), set(board.indices)
        else:
            symbols, indices = board.take_dirty()
        changes = self.topics.changes(
            board, self.source.now(), symbols=symbols, indices=indices, source_ms=data.source_ms
        )
        if not changes:
            return True
        if not await self.leader.still_held():
            log.warning("not publishing topics: no longer the leader")
            return False
        fence = self.leader.fence()

        async def one(name, snapshot, delta):
            self.positions[name] = await publish_topic(
                name,
                snapshot,
                delta,
                day=day,
                source_ms=data.source_ms,
                feed=feed,
                simulated=data.simulated,
                fence=fence,
                floor=self.positions.get(name),
            )

        try:
            for start in range(0, len(changes), TOPIC_BATCH):
                await asyncio.gather(*(one(*change) for change in changes[start : start + TOPIC_BATCH]))
        except Fenced:
            self._fenced("topics")
            return False
        self.stats["topics"] = self.stats.get("topics", 0) + len(changes)
        return True

    async def _prepare(self):
        """While idle, hold what the first subscriber's snapshot needs besides
        data (an SSI token, the day's reference data), so that it waits only
        for the data itself. A failure is logged; the first subscriber's fetch
        tries again and reports it in the feed state."""
        prepare = getattr(self.source, "prepare", None)
        if prepare is None:
            return
        try:
            await prepare()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nobody is waiting: log it and carry on idling
            log.warning("could not prepare for the first subscriber: %s: %s", type(exc).__name__, exc)

    async def set_feed_state(self, name, detail=""):
        """Publish the feed state when it changes (live, stale, down, closed).
        False when fenced: another process took the lock (this one steps down)."""
        if self.feed_state == (name, detail):
            return True
        try:
            await publish_feed_state(name, detail=detail, simulated=self.source.simulated, fence=self.leader.fence())
        except Fenced:
            self._fenced("the feed state")
            return False
        self.feed_state = (name, detail)
        metrics.set_feed_state(name)
        log.info("feed is %s%s", name, f" ({detail})" if detail else "")
        return True

    def _fenced(self, what):
        # Paused past the lock's TTL: another process leads now.
        self.leader.stepped_down()
        log.warning("not publishing %s: another process took the feed leader lock", what)

    async def safe_cycle(self):
        """A cycle that cannot raise: failures are logged and mark the feed stale (or down)."""
        try:
            return await self.cycle()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            self.redis_failed = isinstance(exc, (StateUnavailable, RedisError))
            now = time.monotonic()
            self.failing_since = self.failing_since or now
            log.exception("feed cycle failed (%d in a row)", self.failures)
            retryable = getattr(exc, "retryable", True)
            name = "down" if not retryable or now - self.failing_since >= DOWN_AFTER_S else "stale"
            detail = f"{type(exc).__name__}: {exc}"[:200]
            if self.leader.held:
                try:
                    await self.set_feed_state(name, detail)
                except Exception:  # noqa: BLE001 - Redis may be what failed
                    log.warning("could not publish the feed state %s", name)
            return None

    async def timed_cycle(self):
        """`safe_cycle`, warning when it took more than half the interval."""
        started = time.monotonic()
        result = await self.safe_cycle()
        took = time.monotonic() - started
        if result is not None or self.failures:  # a standby's no-op is not a cycle
            metrics.CYCLE.observe(took)
        interval = self.source.interval()
        # A source says how long its normal cycle may take (SSI: one request per
        # budget slot); the default is half the interval.
        slow_after = getattr(self.source, "slow_after", None)
        limit = max(interval / 2, slow_after() if slow_after else 0.0)
        if took > limit:
            log.warning("slow feed cycle: %.2f s (interval %.1f s)", took, interval)
        return result

    # --- the loop ----------------------------------------------------------------------

    def next_interval(self):
        # Never faster than FEED_PUBLISH_INTERVAL: each stream at most once per interval.
        interval = max(self.source.interval(), settings.FEED_PUBLISH_INTERVAL)
        if self.failures:
            cap = REDIS_BACKOFF_CAP_S if self.redis_failed else BACKOFF_CAP_S
            interval += random.uniform(0, min(cap, 2.0**self.failures))
        return interval

    async def run(self, stop):
        listener = None
        keeper = asyncio.ensure_future(self._keep(stop))
        follower = asyncio.ensure_future(self._follow(stop)) if redis_lib.behind_sentinel() else None
        try:
            while not stop.is_set():
                if not self.leader.held:
                    if listener is not None:
                        listener.cancel()
                        listener = None
                    await self._pause(stop, STANDBY_RETRY_S)
                    continue
                if listener is None:
                    listener = asyncio.ensure_future(self._listen())
                self.wake.clear()
                started = time.monotonic()
                if not await self._run_until_stopped(self.timed_cycle(), stop):
                    break
                await self._pause(stop, max(0.0, self.next_interval() - (time.monotonic() - started)))
        finally:
            tasks = [task for task in (keeper, follower, listener) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.leader.release()
            await self.source.aclose()
            log.info("feed stopped")

    async def _run_until_stopped(self, coro, stop):
        """Run `coro`, cancelling it if `stop` is set meanwhile; False if stopped."""
        task = asyncio.ensure_future(coro)
        while not task.done():
            await asyncio.wait({task}, timeout=SLICE_S)
            if stop.is_set() and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return False
        return True

    async def _pause(self, stop, seconds):
        """Sleep in short slices; return early on stop, on a wake, or when a standby becomes leader."""
        deadline = time.monotonic() + seconds
        was_leader = self.leader.held
        while not stop.is_set() and not self.wake.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.leader.held and not was_leader):
                return
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=min(SLICE_S, remaining))
            except TimeoutError:
                pass

    async def _keep(self, stop):
        """Renew (or, on a standby, try to take) the lock and touch the heartbeat,
        also while a long cycle or a long idle sleep is in progress."""
        while not stop.is_set():
            try:
                if await self.leader.ensure():
                    await self.touch()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("feed leadership check failed", exc_info=True)
            interval = STANDBY_RETRY_S if not self.leader.held else self.leader.renew_every()
            await asyncio.sleep(interval)

    async def _follow(self, stop):
        """Behind Sentinel: after a failover the old master takes writes until
        the Sentinels demote it, seconds later, and everything written there
        is lost (frames, the lock's renewals). Every FOLLOW_EVERY_S, move the
        state's and the channel layer's connections to the master the
        Sentinels name; after a move, renew the lock and touch the heartbeat
        at once, and publish every stream again (numbered past what this
        process published, see `state.frames`): the new master's latest
        frames may be older than what clients already have."""
        while not stop.is_set():
            await asyncio.sleep(FOLLOW_EVERY_S)
            try:
                if await self.follow_master():
                    await self.leader.ensure()
                    await self.touch(force=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no Sentinel answers now: try again next time
                log.debug("could not follow the redis master: %s", exc)

    async def follow_master(self):
        """Move to the master the Sentinels name now; True when it is not the
        one they named last time or when connections moved."""
        client = get_state().redis
        address = await redis_lib.master_address(client)
        moved = await redis_lib.follow_master(client, address=address)
        moved = await redis_lib.follow_master_layer(get_channel_layer(), address=address) or moved
        # A master that died took its connections with it: nothing to move, but it is a new master all the same.
        changed, self.master = self.master is not None and address != self.master, address
        if not (moved or changed):
            return False
        log.warning("redis master is now %s:%s (sentinel): following it", *address)
        self.fingerprints.clear()
        self.feed_state = None
        self.wake.set()
        return True

    async def _listen(self):
        """Wake the loop when a stream gets its first subscriber."""
        layer = get_channel_layer()
        while running():
            try:
                message = await layer.receive(keys.WAKE_CHANNEL)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("feed wake listener failed; retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            if message.get("type") == "feed.wake":
                log.debug("woken by a new subscriber")
                self.wake.set()


async def run_feed(*, stop, elect):
    """Run the feed until `stop` is set (runworker, or the embedded web process)."""
    feed = Feed(elect=elect)
    log.info(
        "feed starting: source=%s%s, leader election %s",
        settings.FEED_SOURCE,
        f" ({settings.SIMULATOR_CLOCK} clock)" if settings.FEED_SOURCE == "simulator" else "",
        "on" if elect else "off",
    )
    await feed.run(stop)
