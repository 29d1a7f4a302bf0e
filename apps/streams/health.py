"""Liveness and readiness probes for load balancers and orchestrators."""

import asyncio
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from stocktracker.lib import metrics as collected
from stocktracker.lib.state import StateUnavailable, get_state

from . import drain, netaddr


async def healthz(request):
    """The process is up and serving. Nothing else is checked."""
    return JsonResponse({"status": "ok"})


def _database_ok():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return True


def feed_max_age():
    """Seconds after which the latest published data counts as stale."""
    if settings.FEED_STALE_AFTER:
        return settings.FEED_STALE_AFTER
    return max(30.0, 3 * (settings.FEED_INTERVAL or 10.0))


async def readyz(request):
    """200 when the database, the channel layer and the feed are all usable;
    503 with the failing checks named otherwise. From SIGTERM on, 503 at
    once with `draining`: the load balancer stops sending new clients here
    before the sockets are closed."""
    if drain.draining():
        return JsonResponse({"status": "draining", "failed": ["draining"], "checks": {}}, status=503)
    checks = {}
    try:
        # With several hosts listed, a vanished one costs a connect timeout before the next.
        extra_hosts = settings.DATABASE_CONNECT_TIMEOUT * (settings.DATABASE_HOSTS - 1)
        await asyncio.wait_for(sync_to_async(_database_ok)(), timeout=3 + extra_hosts)
        checks["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - report any failure, never raise
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    state = get_state()
    try:
        await asyncio.wait_for(state.ping(), timeout=3)
        checks["channel_layer"] = {"ok": True, "backend": "memory" if state.embedded else "redis"}
    except (TimeoutError, StateUnavailable) as exc:
        checks["channel_layer"] = {"ok": False, "error": str(exc) or "timeout"}
    checks["feed"] = await _feed_check(state) if checks["channel_layer"]["ok"] else {"ok": False, "error": "unknown"}
    ok = all(check["ok"] for check in checks.values())
    failed = [name for name, check in checks.items() if not check["ok"]]
    body = {"status": "ok" if ok else "unavailable", "failed": failed, "checks": checks}
    return JsonResponse(body, status=200 if ok else 503)


async def _feed_check(state):
    try:
        feed = await asyncio.wait_for(state.feed_get(), timeout=3)
    except (TimeoutError, StateUnavailable):
        return {"ok": False, "error": "unreachable"}
    if not feed:
        return {"ok": False, "error": "no feed has reported yet"}
    heartbeat_ms = feed.get("heartbeat_ms", feed.get("since_ms", 0))
    age = time.time() - heartbeat_ms / 1000
    result = {"state": feed.get("state"), "age_s": round(age, 1)}
    # A closed market is a healthy feed; stale/down or a silent worker is not.
    result["ok"] = feed.get("state") in ("live", "closed") and age <= feed_max_age()
    if not result["ok"]:
        result["error"] = "feed is " + (feed.get("state") if age <= feed_max_age() else "silent")
    return result


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
