"""The Redis watch: an outage, down or only slow, must never leave a socket
connected but silent.

One task per event loop checks Redis every CHECK_INTERVAL seconds, twice: a
ping of the shared state, then a round trip through the channel layer
itself (a probe published to this process's own probe group must come back
within PROBE_TIMEOUT), because the layer's pub/sub connection can be stuck
while every other connection answers. From the first failed check `healthy`
is False (admission refuses new sockets with 1013); when a check fails
REDIS_DOWN_AFTER seconds or more after the first failed one, with none good
in between (after a failure the next comes after RETRY_INTERVAL), the
`on_lost` listeners run (admission closes every socket with 1013; clients
back off and retry). So one failed check never closes anything, however
long it took. The first good check makes it healthy again. A failed probe
also drops the layer's connections, so that a stuck one is replaced (and
re-subscribed) at once. Worst case, a hung Redis refuses new sockets within
CHECK_INTERVAL + PING_TIMEOUT and closes every socket within CHECK_INTERVAL
+ 2 * PING_TIMEOUT + RETRY_INTERVAL + REDIS_DOWN_AFTER (with one server's
5 s: three failed checks, 10 s). Nothing ends the task but the loop closing, and
`watchdog()` restarts it if it ever stopped. Embedded mode has nothing to
watch.

Behind Sentinel every check first asks the Sentinels where the master is and
moves the shared state's connections, the channel layer's and the watchdog
thread's to it: after a failover the old master takes writes until the
Sentinels demote it, seconds later, and whatever this process wrote there
(leases, frames it would have heard) would be lost. REDIS_DOWN_AFTER
outlasts a failover, so one closes no socket.

A busy process is not an outage. The ping is also sent from a thread of its
own, whose socket read does not wait for the event loop: if that one
answers, the loop is lagging, not Redis. The probe's deadline counts only
the time the loop was awake to see it come back: time the loop spent late
(a saturated loop) is not charged to Redis.
"""

import asyncio
import concurrent.futures
import logging
import secrets
import time

from django.conf import settings

from stocktracker.lib import keys
from stocktracker.lib import redis as redis_lib
from stocktracker.lib.aio import PerLoop, running
from stocktracker.lib.state import StateUnavailable, get_state

log = logging.getLogger("apps.streams")

CHECK_INTERVAL = 2.0  # seconds between pings
RETRY_INTERVAL = 1.0  # seconds to the next ping after a failed one
PING_TIMEOUT = 2.0
PROBE_TIMEOUT = 2.0  # seconds of the loop's own time a channel-layer probe may take to come back
PROBE_SLICE = 0.1  # the probe's wait is measured in slices; lateness beyond a slice is the loop's
PROBE = "watchdog.probe"
BUSY_LOG_INTERVAL = 10.0  # "busy, not down" and "still failing" are logged at most this often

_watchdogs = PerLoop(lambda: Watchdog())


class Watchdog:
    def __init__(self):
        self.on_lost = []  # coroutine functions run when Redis is taken for down
        self.up = True  # False from a trip to the next good check
        self.task = None
        self.closing = set()
        self.failures = 0  # failed checks in a row
        self.failing_since = None  # monotonic time the first of them failed
        self.failing_logged = 0.0
        self.probe_task = None
        self.probe_ready = asyncio.Event()
        self.probe_back = asyncio.Event()
        self.probe_seen = None  # nonce of the last probe that came back
        self.probe_group = keys.probe_group(secrets.token_hex(8))
        self.busy_logged = 0.0
        self._pinger = None
        self._thread = None
        self._master = None  # (host, port) the Sentinels named at the last check; the thread's pinger follows it
        self.follow_logged = 0.0

    @property
    def healthy(self):
        """New sockets are taken: Redis answered the last check."""
        return self.up and self.failures == 0

    # --- Redis ------------------------------------------------------------------------

    def start(self):
        if settings.REDIS_URL and (self.task is None or self.task.done()):
            if self.task is not None and not self.task.cancelled() and self.task.exception() is not None:
                log.error("redis watchdog had stopped; restarting it", exc_info=self.task.exception())
            self.task = asyncio.ensure_future(self._run())
            self._start_probe_receiver()  # subscribed before the first check

    async def _run(self):
        while running():
            await asyncio.sleep(RETRY_INTERVAL if self.failures and self.up else CHECK_INTERVAL)
            try:
                await self.check()
            except Exception:  # a bug here must not end the watch
                log.exception("redis watchdog check failed")

    async def check(self):
        """One ping and one channel-layer probe; checks failing for
        REDIS_DOWN_AFTER seconds in a row close every socket."""
        moved = await self._follow_master()
        exc = await self._ping()
        # The layer's connections were just replaced (and subscribe again
        # within a second): the next check probes them.
        if exc is None and not moved:
            exc = await self._probe()
        if exc is not None:
            self._failed(_describe(exc))
            return
        if not self.up:
            log.warning("redis is back: accepting connections again")
        elif self.failures:
            failing = time.monotonic() - self.failing_since
            log.warning("redis answers again after %d failed checks over %.1f s", self.failures, failing)
        self.up = True
        self.failures = 0
        self.failing_since = None

    async def _ping(self):
        """None when Redis answers this process: its event loop's pool, or
        (the loop being busy) the watchdog thread's own connection. Both are
        asked at once, so a check takes at most PING_TIMEOUT."""
        confirm = asyncio.get_running_loop().run_in_executor(self._executor(), self._sync_ping)
        try:
            await asyncio.wait_for(get_state().ping(), PING_TIMEOUT)
            return None
        except Exception as exc:
            if not isinstance(exc, (TimeoutError, StateUnavailable, OSError)):
                log.warning("redis ping failed unexpectedly", exc_info=True)
            try:
                up = bool(await confirm)
            except Exception:  # noqa: BLE001 - any failure means "not confirmed"
                up = False
            if not up:
                return exc if str(exc) else TimeoutError("ping not answered")
            now = time.monotonic()
            if now - self.busy_logged >= BUSY_LOG_INTERVAL:
                self.busy_logged = now
                log.warning("redis ping on the event loop failed (%s) but Redis answers: "
                            "the process is busy, not Redis down", _describe(exc))  # fmt: skip
            return None

    async def _follow_master(self):
        """Behind Sentinel: move the shared state's and the channel layer's
        connections (and, at its next ping, the thread's) to the master the
        Sentinels name now. True when any connection moved. When no Sentinel
        answers, the connections stay where they are and the ping decides."""
        if not redis_lib.behind_sentinel():
            return False
        client = get_state().redis
        try:
            address = await redis_lib.master_address(client)
            moved = await redis_lib.follow_master(client, address=address)
            moved = await redis_lib.follow_master_layer(self._layer(), address=address) or moved
        except Exception as exc:  # noqa: BLE001 - no Sentinel answers, or none names a master (a failover under way)
            now = time.monotonic()
            if now - self.follow_logged >= BUSY_LOG_INTERVAL:
                self.follow_logged = now
                log.warning("could not ask the sentinels where the redis master is: %s", _describe(exc))
            return False
        if moved or (self._master is not None and address != self._master):
            log.warning("redis master is now %s:%s (sentinel): following it", *address)
        self._master = address
        return bool(moved)

    # --- the channel layer's own round trip --------------------------------------------

    def _layer(self):
        from channels.layers import get_channel_layer

        return get_channel_layer()

    async def _probe_receiver(self):
        """This process's probe channel: joined to its own probe group, it
        records the nonce of every probe that comes back."""
        layer = self._layer()
        while running():
            try:
                channel = await asyncio.wait_for(layer.new_channel(keys.PROBE_CHANNEL), PING_TIMEOUT)
                await asyncio.wait_for(layer.group_add(self.probe_group, channel), PING_TIMEOUT)
                self.probe_ready.set()
                while running():
                    message = await layer.receive(channel)
                    if message.get("type") == PROBE:
                        self.probe_seen = message.get("nonce")
                        self.probe_back.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: the checks count it; subscribe again
                self.probe_ready.clear()
                log.debug("watchdog probe channel failed: %s", exc)
                await asyncio.sleep(RETRY_INTERVAL)

    def _start_probe_receiver(self):
        if self.probe_task is None or self.probe_task.done():
            self.probe_task = asyncio.ensure_future(self._probe_receiver())

    async def _probe(self):
        """None when a probe published to this process's probe group came
        back through the channel layer within PROBE_TIMEOUT of loop time."""
        self._start_probe_receiver()
        nonce = secrets.token_hex(6)
        try:
            await asyncio.wait_for(self.probe_ready.wait(), PING_TIMEOUT)
            await self._send_probe({"type": PROBE, "nonce": nonce})
        except Exception as exc:  # noqa: BLE001 - cannot subscribe or publish: a failed check
            failure = exc if str(exc) else TimeoutError("the probe could not be sent")
        else:
            if await self._came_back(nonce):
                return None
            failure = TimeoutError(f"channel layer probe not back within {PROBE_TIMEOUT:.0f} s")
        await self._reset_layer()
        return failure

    async def _send_probe(self, message):
        """Publish the probe. With the pub/sub layer it goes out from the
        watchdog thread's own connection, straight to the group's Redis
        channel: what is tested is this process's receiving side, and a
        publish queued behind the layer's own sends (a connect storm on a slow
        Redis) is not taken for a stuck layer. Redis says how many
        connections it reached; none means our subscription is gone."""
        layer = self._layer()
        try:
            inner = layer._get_layer()
            channel = inner._get_group_channel_name(self.probe_group)
            payload = layer.serialize(message)
        except AttributeError:  # the core layer: its own group_send, bounded
            await asyncio.wait_for(layer.group_send(self.probe_group, message), PING_TIMEOUT)
            return
        sent = asyncio.get_running_loop().run_in_executor(self._executor(), self._sync_publish, channel, payload)
        if not await asyncio.wait_for(sent, 2 * PING_TIMEOUT):
            raise ConnectionError("the channel layer's subscription is gone")

    def _sync_publish(self, channel, payload):
        import redis

        if self._pinger is None and not self._sync_ping():
            raise ConnectionError("redis does not answer the watchdog thread")
        try:
            return self._pinger.publish(channel, payload)
        except (redis.RedisError, OSError):
            self._pinger.close()
            self._pinger = None
            raise

    async def _came_back(self, nonce):
        """Waits for the probe, charging Redis only with the time the loop was
        on time: a wake-up later than its slice counts as one slice."""
        loop = asyncio.get_running_loop()
        waited = 0.0
        while self.probe_seen != nonce:
            if waited >= PROBE_TIMEOUT:
                return False
            step = min(PROBE_SLICE, PROBE_TIMEOUT - waited)
            self.probe_back.clear()
            if self.probe_seen == nonce:
                break
            before = loop.time()
            waiter = asyncio.ensure_future(self.probe_back.wait())
            try:
                await asyncio.wait({waiter}, timeout=step)
            finally:
                waiter.cancel()
            waited += min(loop.time() - before, step)
        return True

    async def _reset_layer(self):
        """Drop the pub/sub layer's connections: a stuck one is replaced at
        the next read, and redis-py subscribes the new one to every channel
        again. (The core layer's calls time out and reconnect on their own.)"""
        try:
            inner = self._layer()._get_layer()
        except AttributeError:
            return
        for shard in getattr(inner, "_shards", ()):
            pubsub, client = getattr(shard, "_pubsub", None), getattr(shard, "_redis", None)
            try:
                if pubsub is not None and pubsub.connection is not None:
                    await asyncio.wait_for(pubsub.connection.disconnect(nowait=True), PING_TIMEOUT)
                if client is not None:
                    await asyncio.wait_for(client.connection_pool.disconnect(), PING_TIMEOUT)
            except Exception:
                log.debug("dropping the channel layer's connections failed", exc_info=True)
        log.warning("channel layer check failed: dropped the layer's Redis connections")

    def _executor(self):
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="redis-watchdog")
        return self._thread

    def _sync_ping(self):
        import redis

        if self._pinger is None:
            self._pinger = redis_lib.sync_client(
                socket_timeout=min(PING_TIMEOUT, settings.REDIS_SOCKET_TIMEOUT),
                connect_timeout=min(PING_TIMEOUT, settings.REDIS_CONNECT_TIMEOUT),
            )
        try:
            if self._master is not None:
                redis_lib.follow_master_sync(self._pinger, self._master)
            return self._pinger.ping()
        except (redis.RedisError, OSError):
            self._pinger.close()
            self._pinger = None
            return False

    def _failed(self, exc):
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        failing = time.monotonic() - self.failing_since
        if failing < settings.REDIS_DOWN_AFTER:
            if self.failures == 1 or time.monotonic() - self.failing_logged >= BUSY_LOG_INTERVAL:
                self.failing_logged = time.monotonic()
                log.warning("redis check failed (%s), %d in a row over %.1f s: refusing new sockets; "
                            "closing them all after %g s (REDIS_DOWN_AFTER)", exc or "timeout", self.failures,
                            failing, settings.REDIS_DOWN_AFTER)  # fmt: skip
            return
        if self.up:
            log.error("redis unavailable for %.1f s (%s): closing every socket with 1013", failing, exc or "timeout")
        self.up = False
        self.closing = {asyncio.ensure_future(lost()) for lost in list(self.on_lost)}


def _describe(exc):
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def watchdog() -> Watchdog:
    found = _watchdogs.get()
    found.start()
    return found
