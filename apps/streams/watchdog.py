"""Process-level guards for the sockets: Redis outages and SIGTERM.

Redis outages, down or only slow, must never leave a socket connected but
silent.

One task per event loop checks Redis every CHECK_INTERVAL seconds, twice:
a ping of the shared state, then a round trip through the channel layer
itself (a probe published to this process's own probe group must come back
within PROBE_TIMEOUT), because the layer's pub/sub connection can be stuck
while every other connection answers. From the first failed check new
sockets are refused at once with 1013; when FAILURES_TO_TRIP checks in a row
fail (after a failure the next comes after RETRY_INTERVAL), every socket this
process holds is closed with 1013 (clients back off and retry). The first
good check lets them in again. A failed probe also drops the layer's
connections, so that a stuck one is replaced (and re-subscribed) at once.
Worst case, a hung Redis is noticed within
CHECK_INTERVAL + FAILURES_TO_TRIP * PING_TIMEOUT + (FAILURES_TO_TRIP - 1) * RETRY_INTERVAL
(10 s). Nothing ends the task but the loop closing, and `watchdog()` restarts
it if it ever stopped. Embedded mode has nothing to watch.

A busy process is not an outage. The ping is also sent from a thread of its
own, whose socket read does not wait for the event loop: if that one
answers, the loop is lagging (counted and logged once per interval), not
Redis. The probe's deadline counts only the time the loop was awake to see
it come back: time the loop spent late (a saturated loop) is not charged to
Redis. The loop's lag is also measured all
along: past OVERLOAD_LAG, or with WS_MAX_SOCKETS_PER_PROCESS sockets open,
new sockets are refused at once with 1013 while the open ones keep
streaming; refusals are logged once per REFUSAL_LOG_INTERVAL with a count,
never one line per socket. Sockets not signed in yet (waiting for their `auth`
message, or being checked) are capped too: WS_MAX_UNAUTHENTICATED_PER_PROCESS
in all (1013 past it), WS_MAX_UNAUTHENTICATED_PER_IP from one address (4100);
WS_AUTH_TIMEOUT closes the idle ones.

SIGTERM under daphne: daphne's own shutdown cancels applications, but a
connection it has not reaped yet makes that trigger fail with a KeyError
(daphne 4.2.3, `kill_all_applications`), and the reactor then drops every
socket with no close frame. So the first socket installs a SIGTERM handler that, in this order: marks the process
draining (`/readyz` answers 503 and new sockets are refused with 4200 from
that instant), closes every socket with 4200 at a random moment within
WS_DRAIN_SECONDS (so its clients do not all come back in the same instant)
and gives its leases back, flushes the token usage counts, then hands over
to daphne's handler.
"""

import asyncio
import concurrent.futures
import logging
import random
import secrets
import signal
import threading
import time
import weakref

from django.conf import settings

from stocktracker.lib.aio import PerLoop, running
from stocktracker.lib.state import StateUnavailable, get_state

log = logging.getLogger("apps.streams")

CHECK_INTERVAL = 2.0  # seconds between pings
RETRY_INTERVAL = 1.0  # seconds to the next ping after a failed one
PING_TIMEOUT = 2.0
PROBE_TIMEOUT = 2.0  # seconds of the loop's own time a channel-layer probe may take to come back
PROBE_SLICE = 0.1  # the probe's wait is measured in slices; lateness beyond a slice is the loop's
PROBE = "watchdog.probe"
FAILURES_TO_TRIP = 3  # failed checks in a row that mean "Redis is down"
DRAIN_TIMEOUT = 2.0  # seconds SIGTERM waits, after the spread, for sockets to close before daphne stops
FLUSH_TIMEOUT = 5.0  # seconds for the last usage flush
LAG_PROBE = 0.5  # seconds between event-loop lag probes
OVERLOAD_LAG = 2.0  # an event loop this many seconds late refuses new sockets
REFUSAL_LOG_INTERVAL = 10.0
STALL_LOG = 0.5  # a lag probe this late is logged (once per interval)

_watchdogs = PerLoop(lambda: Watchdog())


class Watchdog:
    def __init__(self):
        self.consumers = weakref.WeakSet()
        # Sockets not signed in yet (waiting for `auth`, or being checked):
        # capped per process, so idle or forged sockets cannot pile up.
        self.unauthenticated = weakref.WeakSet()
        self.unauthenticated_by_ip = {}  # ip -> WeakSet: token and anonymous sockets only
        self.up = True  # False from a trip to the next good check
        self.task = None
        self.closing = set()
        self.failures = 0  # failed checks in a row
        self.probe_task = None
        self.probe_ready = asyncio.Event()
        self.probe_back = asyncio.Event()
        self.probe_seen = None  # nonce of the last probe that came back
        self.probe_group = f"probe.{secrets.token_hex(8)}"
        self.lag = 0.0  # how late the last lag probe woke, seconds
        self.lag_task = None
        self.refusals = {}  # why -> count since the last log line
        self.refusals_logged = 0.0
        self.lag_logged = 0.0
        self._pinger = None
        self._thread = None

    @property
    def healthy(self):
        """New sockets are taken: Redis answered the last check."""
        return self.up and self.failures == 0

    # --- overload -----------------------------------------------------------------

    def overloaded(self):
        """Why this process takes no new socket now, or None."""
        open_now = len(self.consumers)
        if open_now >= settings.WS_MAX_SOCKETS_PER_PROCESS:
            return f"process at capacity ({open_now} sockets, WS_MAX_SOCKETS_PER_PROCESS)"
        if self.lag > OVERLOAD_LAG:
            return f"event loop {self.lag:.1f} s behind"
        return None

    def signing_in(self, consumer, ip=None):
        """Count `consumer` as not signed in yet and return None, or (refusal,
        why) past WS_MAX_UNAUTHENTICATED_PER_PROCESS, or past the per-IP cap
        of such sockets from `ip` (None: not counted per address, a session)."""
        from .protocol import Refusal

        waiting = len(self.unauthenticated)
        if waiting >= settings.WS_MAX_UNAUTHENTICATED_PER_PROCESS:
            return Refusal.SIGN_IN_FULL, f"{waiting} sockets not signed in yet (WS_MAX_UNAUTHENTICATED_PER_PROCESS)"
        from_ip = self.unauthenticated_by_ip.get(ip) if ip is not None else None
        if from_ip is not None and len(from_ip) >= settings.WS_MAX_UNAUTHENTICATED_PER_IP:
            why = f"{len(from_ip)} sockets from one address not signed in yet (WS_MAX_UNAUTHENTICATED_PER_IP)"
            return Refusal.OVER_LIMIT._replace(message="too many connections for this ip"), why
        self.unauthenticated.add(consumer)
        if ip is not None:
            self.unauthenticated_by_ip.setdefault(ip, weakref.WeakSet()).add(consumer)
        return None

    def signed_in(self, consumer, ip=None):
        """`consumer` is signed in or gone: it stops counting (safe to repeat)."""
        self.unauthenticated.discard(consumer)
        found = self.unauthenticated_by_ip.get(ip) if ip is not None else None
        if found is not None:
            found.discard(consumer)
            if not found:
                del self.unauthenticated_by_ip[ip]

    def refused(self, reason, why, path):
        """Count a refusal before start; one log line per interval with the counts."""
        from .metrics import REJECTIONS

        stream = (path or "").strip("/").split("/")[-1] or "?"
        REJECTIONS.labels(stream, str(int(reason.close))).inc()
        kind = reason.error
        self.refusals[kind] = self.refusals.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.refusals_logged >= REFUSAL_LOG_INTERVAL:
            counts = ", ".join(f"{k}: {v}" for k, v in self.refusals.items())
            log.warning("refusing new sockets with %d (%s); last: %s", int(reason.close), counts, why)
            self.refusals = {}
            self.refusals_logged = now

    async def _probe_lag(self):
        loop = asyncio.get_running_loop()
        while running():
            before = loop.time()
            await asyncio.sleep(LAG_PROBE)
            self.lag = max(0.0, loop.time() - before - LAG_PROBE)
            if _gc["freeze"]:
                _apply_gc_plan()
            if self.lag > STALL_LOG and loop.time() - self.lag_logged >= REFUSAL_LOG_INTERVAL:
                self.lag_logged = loop.time()
                log.warning("event loop stalled %.2f s (%d sockets)", self.lag, len(self.consumers))

    # --- Redis ------------------------------------------------------------------------

    def start(self):
        _watch_gc()
        if self.lag_task is None or self.lag_task.done():
            self.lag_task = asyncio.ensure_future(self._probe_lag())
        if settings.REDIS_URL and (self.task is None or self.task.done()):
            if self.task is not None and not self.task.cancelled() and self.task.exception() is not None:
                log.error("redis watchdog had stopped; restarting it", exc_info=self.task.exception())
            self.task = asyncio.ensure_future(self._run())
            self._start_probe_receiver()  # subscribed before the first check

    async def _run(self):
        while running():
            await asyncio.sleep(RETRY_INTERVAL if 0 < self.failures < FAILURES_TO_TRIP else CHECK_INTERVAL)
            try:
                await self.check()
            except Exception:  # a bug here must not end the watch
                log.exception("redis watchdog check failed")

    async def check(self):
        """One ping and one channel-layer probe; FAILURES_TO_TRIP failed
        checks in a row close every socket."""
        exc = await self._ping()
        if exc is None:
            exc = await self._probe()
        if exc is not None:
            self._failed(_describe(exc))
            return
        if not self.up:
            log.warning("redis is back: accepting connections again")
        elif self.failures:
            log.warning("redis answers again after %d failed checks", self.failures)
        self.up = True
        self.failures = 0

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
            if now - self.lag_logged >= REFUSAL_LOG_INTERVAL:
                self.lag_logged = now
                log.warning("redis ping on the event loop failed (%s, loop %.1f s behind) but Redis answers: "
                            "the process is busy, not Redis down", _describe(exc), self.lag)  # fmt: skip
            return None

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
                channel = await asyncio.wait_for(layer.new_channel("stk-probe."), PING_TIMEOUT)
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
            self._pinger = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=min(PING_TIMEOUT, settings.REDIS_SOCKET_TIMEOUT),
                socket_connect_timeout=min(PING_TIMEOUT, settings.REDIS_CONNECT_TIMEOUT),
            )
        try:
            return self._pinger.ping()
        except (redis.RedisError, OSError):
            self._pinger.close()
            self._pinger = None
            return False

    def _failed(self, exc):
        self.failures += 1
        if self.failures < FAILURES_TO_TRIP:
            log.warning("redis check failed (%s), %d in a row: refusing new sockets", exc or "timeout", self.failures)
            return
        if self.up:
            log.error("redis unavailable (%s): closing %d sockets with 1013", exc or "timeout", len(self.consumers))
        self.up = False
        self.closing = {asyncio.ensure_future(consumer.backend_lost()) for consumer in list(self.consumers)}


def _describe(exc):
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_gc = {"started": None, "freeze": False, "thawed": 0.0}
GC_THAW = 600.0  # seconds between thaws (see _on_gc)


def _watch_gc():
    import gc

    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)
        _gc["thawed"] = time.monotonic()


def _on_gc(phase, info):
    """A full collection walks every object of every open socket (about 2 s
    at 10,000 sockets) and, while sockets keep arriving, runs every few
    seconds. Survivors of one are long-lived: they are frozen (left out of
    later collections) at the next lag probe. A frozen object is still freed
    by refcounting, but not when it sits in a reference cycle: a closed
    socket's cycle is broken when daphne forgets it (transport._forget);
    whatever other cycles were frozen go at the next thaw, every GC_THAW
    seconds (one full-length collection per GC_THAW). Long ones are logged."""
    if info.get("generation") != 2:
        return
    now = time.monotonic()
    if phase == "start":
        _gc["started"] = now
        return
    took = now - (_gc["started"] or now)
    if took > STALL_LOG / 2:
        log.warning("full garbage collection took %.2f s (%d objects collected)", took, info.get("collected", 0))
    if now - _gc["thawed"] >= GC_THAW:
        _gc["thawed"] = now
        _gc["freeze"] = "thaw"
    else:
        _gc["freeze"] = "freeze"


def _apply_gc_plan():
    import gc

    plan, _gc["freeze"] = _gc["freeze"], False
    if plan == "freeze":
        gc.freeze()
    elif plan == "thaw":
        gc.unfreeze()


def watchdog() -> Watchdog:
    found = _watchdogs.get()
    found.start()
    return found


_drain_installed = False
_draining = False


def draining():
    """True from SIGTERM on: not ready, no new sockets."""
    return _draining


def install_sigterm_drain():
    """Once per process, from the server's event loop (main thread)."""
    global _drain_installed
    if _drain_installed or threading.current_thread() is not threading.main_thread():
        return
    _drain_installed = True
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        global _draining
        _draining = True  # first of all: /readyz says 503 from now on
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM stops at once
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(_drain_then(previous, signum, frame)))

    signal.signal(signal.SIGTERM, on_sigterm)


async def _close_at(consumer, delay):
    await asyncio.sleep(delay)
    await consumer.shutdown()


async def _drain_then(previous, signum, frame):
    from .accounting import accounting

    consumers = list(watchdog().consumers)
    spread = settings.WS_DRAIN_SECONDS
    log.warning("SIGTERM: draining; closing %d sockets with 4200 over %.1f s", len(consumers), spread)
    try:
        if consumers:
            await asyncio.wait_for(
                asyncio.gather(*(_close_at(c, random.uniform(0, spread)) for c in consumers), return_exceptions=True),
                spread + DRAIN_TIMEOUT,
            )
    except TimeoutError:
        log.warning("SIGTERM: sockets still closing after %.0f s; stopping anyway", spread + DRAIN_TIMEOUT)
    try:
        await asyncio.wait_for(accounting().flush(), FLUSH_TIMEOUT)
    except Exception:
        log.warning("SIGTERM: the last token usage flush failed", exc_info=True)
    finally:
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(0)
