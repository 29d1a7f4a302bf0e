"""The probes, and /metrics.

Three probes, answered in front of Django (`probes`, wired in asgi.py):
a load balancer may call them a thousand times a second, and Django's
request cycle (middleware, signals, a thread per request) costs many times
more than the answer. They also answer whatever the Host header, so a
balancer can probe a daphne port by its address.

- `/healthz` (liveness): the process answers. Nothing else is checked.
- `/readyz` (readiness, for load balancers): this process should get new
  sockets. Not draining, Redis answering (the watchdog's last check and a
  ping at most once per READY_PING_EVERY), not at WS_MAX_SOCKETS_PER_PROCESS
  and its event loop not lagging: what admission checks before taking a
  socket. No database and no feed: sockets of known tokens stream through a
  database outage, and a stalled feed is shown to every client as `stale`;
  neither is helped by taking every process out of rotation.
- `/status` (everything, for monitoring and alerts): readiness, plus the
  database, the channel layer and the feed. Those checks run at most once
  per STATUS_EVERY seconds per process whoever asks (others get that run's
  answer), so a flood costs at most one database connection a second.
"""

import asyncio
import concurrent.futures
import json
import math
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from stocktracker.lib import metrics as collected
from stocktracker.lib.aio import PerLoop
from stocktracker.lib.state import StateUnavailable, get_state

from . import drain, netaddr

READY_PING_EVERY = 1.0  # seconds between /readyz's own Redis pings (per process)
STATUS_EVERY = 1.0  # seconds between runs of /status's database, channel layer and feed checks
CHECK_TIMEOUT = 3.0  # seconds one check may take (the database: plus a connect timeout per extra host)


class Latest:
    """The latest result of an async check that never raises, run at most once
    per `every` seconds (counted from the end of the last run) and by one
    caller at a time: callers meanwhile share that run."""

    def __init__(self, check, every):
        self.check = check
        self.every = every
        self.result = None
        self.at = -math.inf  # monotonic end of the last run
        self.running = None

    async def get(self, wait=True):
        """The result; `wait=False`: the last one at once, refreshed in the
        background when old (waits only for the very first)."""
        if time.monotonic() - self.at < self.every:
            return self.result
        if self.running is None or self.running.done():
            self.running = asyncio.ensure_future(self._run())
        if wait or self.result is None:
            return await asyncio.shield(self.running)
        return self.result

    async def _run(self):
        try:
            self.result = await self.check()
        finally:
            self.at = time.monotonic()
        return self.result


# --- the checks -------------------------------------------------------------------------


async def _redis_ping():
    try:
        await asyncio.wait_for(get_state().ping(), CHECK_TIMEOUT)
        return {"ok": True}
    except (TimeoutError, StateUnavailable) as exc:
        return {"ok": False, "error": str(exc) or "no answer"}


# The database check runs in a thread of its own, one at a time, and closes its
# connection: it never waits behind (or holds up) the token checks' thread.
_database_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="status-database")
_database_running = None  # the check in that thread, while it runs


def _database_ok():
    from django.db import connections

    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


async def _database_check():
    global _database_running
    if _database_running is None or _database_running.done():
        _database_running = _database_thread.submit(_database_ok)
    # With several hosts listed, a vanished one costs a connect timeout before the next.
    timeout = CHECK_TIMEOUT + settings.DATABASE_CONNECT_TIMEOUT * (settings.DATABASE_HOSTS - 1)
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(_database_running)), timeout)
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001 - report any failure, never raise
        return {"ok": False, "error": type(exc).__name__}


def feed_max_age():
    """Seconds after which the latest published data counts as stale."""
    if settings.FEED_STALE_AFTER:
        return settings.FEED_STALE_AFTER
    return max(30.0, 3 * (settings.FEED_INTERVAL or 10.0))


async def _feed_check(state):
    try:
        feed = await asyncio.wait_for(state.feed_get(), CHECK_TIMEOUT)
    except (TimeoutError, StateUnavailable):
        return {"ok": False, "error": "unreachable"}
    if not feed:
        return {"ok": False, "error": "no feed has reported yet"}
    heartbeat_ms = feed.get("heartbeat_ms", feed.get("since_ms", 0))
    age = time.time() - heartbeat_ms / 1000
    name = feed.get("state") or "unknown"  # a worker's heartbeat comes before its first state
    result = {"state": name, "age_s": round(age, 1)}
    # A closed market is a healthy feed; stale/down or a silent worker is not.
    result["ok"] = name in ("live", "closed") and age <= feed_max_age()
    if not result["ok"]:
        result["error"] = "feed is " + (name if age <= feed_max_age() else "silent")
    return result


async def _shared_checks():
    """The checks /status adds to readiness: database, channel layer, feed."""
    state = get_state()
    database, layer = await asyncio.gather(_database_check(), _redis_ping())
    if state.embedded:
        layer = {"ok": True, "backend": "memory"}
    else:
        layer = {**layer, "backend": "redis"}
    feed = await _feed_check(state) if layer["ok"] else {"ok": False, "error": "unknown"}
    return {"database": database, "channel_layer": layer, "feed": feed}


_latest = PerLoop(
    lambda: {"ping": Latest(_redis_ping, READY_PING_EVERY), "status": Latest(_shared_checks, STATUS_EVERY)}
)


async def readiness():
    """{check: {"ok": ...}} of this process taking new sockets (see the module docstring)."""
    from .admission import admission
    from .watchdog import watchdog

    checks = {"draining": {"ok": not drain.draining()}}
    if get_state().embedded:
        checks["channel_layer"] = {"ok": True, "backend": "memory"}
    else:
        ping = await _latest.get()["ping"].get(wait=False)
        dog = watchdog()  # started here too: a process with no socket yet is watched
        layer = {"ok": ping["ok"] and dog.healthy, "backend": "redis"}
        if not ping["ok"]:
            layer["error"] = ping["error"]
        elif not dog.healthy:
            layer["error"] = "redis failed the watchdog's last check"
        checks["channel_layer"] = layer
    guard = admission()
    busy = guard.overloaded()
    checks["capacity"] = {"ok": busy is None, "sockets": len(guard.sockets)}
    if busy:
        checks["capacity"]["error"] = busy
    return checks


def _verdict(checks):
    failed = [name for name, check in checks.items() if not check["ok"]]
    status = "draining" if "draining" in failed else "unavailable" if failed else "ok"
    return (503 if failed else 200), {"status": status, "failed": failed, "checks": checks}


async def healthz():
    """The process is up and serving. Nothing else is checked."""
    return 200, {"status": "ok"}


async def readyz():
    """200 when this process should get new sockets; 503 naming why not. From
    SIGTERM on, 503 at once with `draining`: the balancer stops sending new
    clients here before the sockets are closed."""
    return _verdict(await readiness())


async def status():
    """200 when everything is healthy; 503 naming what is not."""
    checks = await readiness()
    checks.update(await _latest.get()["status"].get())
    return _verdict(checks)


PROBES = {"/healthz": healthz, "/readyz": readyz, "/status": status}


def probes(app):
    """ASGI middleware in front of Django's HTTP handler: GET or HEAD of a
    probe path is answered here; anything else goes on to `app`."""

    async def middleware(scope, receive, send):
        probe = PROBES.get(scope.get("path")) if scope["type"] == "http" else None
        if probe is None:
            return await app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            return await _respond(send, 405, {"error": "GET or HEAD"}, [(b"allow", b"GET, HEAD")])
        code, body = await probe()
        await _respond(send, code, body, head=scope["method"] == "HEAD")

    return middleware


async def _respond(send, code, body, headers=(), head=False):
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else payload})


# --- /metrics (a Django view: it reads the session) ---------------------------------------


def _metrics_allowed(request, user):
    if user.is_authenticated and user.is_active and user.is_staff:
        return True
    # The client behind trusted proxies, by the same rule as the sockets.
    return netaddr.in_networks(netaddr.request_client_ip(request), settings.METRICS_ALLOWED_IPS)


@never_cache
@require_GET
async def metrics(request):
    """Prometheus text format; staff sessions and METRICS_ALLOWED_IPS only."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from .accounting import accounting

    if not _metrics_allowed(request, await request.auser()):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    await accounting().fold()  # this process's sockets are exact; others fold every few seconds
    body = await sync_to_async(collected.exposition, thread_sensitive=False)()
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
