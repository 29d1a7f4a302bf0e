import json
import logging
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps.streams import snapshots
from apps.streams.protocol import now_ms, refusal_table
from stocktracker.lib import catalogue, keys
from stocktracker.lib.state import StateUnavailable, get_state

log = logging.getLogger("apps.dashboard")

# Socket reconnection and polling (static/dashboard/socket.js).
CLIENT_OPTIONS = {
    "backoff_base_ms": 500,
    "backoff_cap_ms": 30_000,
    "poll_after_failures": 3,
    "poll_interval_ms": 5_000,
}


def _parse(text):
    try:
        frame = json.loads(text) if text else None
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None


async def _render(request, template, context):
    # Templates may touch request.user (a lazy DB read): render off the event loop.
    return await sync_to_async(render)(request, template, context)


@never_cache
@login_required
@require_GET
async def dashboard(request):
    user = await request.auser()
    frames, feed, unavailable = {}, None, False
    try:
        texts = await snapshots.latest_texts(keys.user(user.pk))
        frames = {stream: _parse(text) for stream, text in texts.items()}
        feed = await get_state().feed_get()
    except StateUnavailable:
        unavailable = True
    market = (frames.get("market") or {}).get("data") or {}
    stocks = sorted(market.get("stocks") or [], key=lambda s: s.get("symbol") or "")
    config = {
        "server_time_ms": now_ms(),
        "login_url": reverse("login") + "?next=" + reverse("dashboard"),
        "streams": {
            stream: {
                "ws": f"/ws/{stream}",
                "snapshot": reverse("snapshot", args=[stream]),
                "epoch": (frames.get(stream) or {}).get("epoch"),
                "seq": (frames.get(stream) or {}).get("seq"),
                "published_ms": (frames.get(stream) or {}).get("published_ms"),
            }
            for stream in catalogue.STREAMS
        },
        "feed": feed and {k: feed.get(k) for k in ("state", "since_ms", "detail", "simulated")},
        # Close code -> what the page says when no `error` frame told it more.
        "refusals": refusal_table(),
        **CLIENT_OPTIONS,
    }
    foreign = (frames.get("foreign") or {}).get("data") or {}
    tops = (foreign.get("top_buyers") or [])[:5] + (foreign.get("top_sellers") or [])[:5]
    published = (frames.get("market") or {}).get("published_ms")
    simulated = any((f or {}).get("simulated") for f in frames.values()) or bool(feed and feed.get("simulated"))
    context = {
        "frames": frames,
        "market": market,
        "stocks": stocks,
        "futures": market.get("futures"),
        "foreign": foreign,
        "foreign_max": max([abs(r.get("net_value") or 0) for r in tops] + [1]),
        "updated_age": max(0, round((now_ms() - published) / 1000)) if published else None,
        "indices": ((frames.get("index") or {}).get("data") or {}).get("indices") or [],
        "feed": feed,
        "simulated": simulated,
        "unavailable": unavailable,
        "config": config,
    }
    return await _render(request, "dashboard/board.html", context)


USAGE_DAYS = 7  # "My tokens" shows today and the last week


def _usage_by_token(user):
    """{token_id: {"today": {...}, "week": {...}}} in one query."""
    from django.db.models import Max, Q, Sum

    from apps.accounts.models import TokenUsage

    today = timezone.localdate()
    since = today - timedelta(days=USAGE_DAYS - 1)
    fields = {"connections": "connections", "peak": "peak_concurrent", "messages": "messages", "bytes": "bytes"}
    fields["rejections"] = "rejections"
    aggregates = {}
    for label, field in fields.items():
        agg = Max if label == "peak" else Sum
        aggregates[f"today_{label}"] = agg(field, filter=Q(day=today))
        aggregates[f"week_{label}"] = agg(field)
    usage = {}
    for row in TokenUsage.objects.filter(token__user=user, day__gte=since).values("token_id").annotate(**aggregates):
        usage[row["token_id"]] = {
            period: {label: row[f"{period}_{label}"] or 0 for label in fields} for period in ("today", "week")
        }
    return usage


def _token_rows(user):
    from apps.accounts.models import ApiToken, UserLimits

    now = timezone.now()
    rows = []
    usage = _usage_by_token(user)
    empty = dict.fromkeys(("connections", "peak", "messages", "bytes", "rejections"), 0)
    for token in ApiToken.objects.filter(user=user).select_related("user").order_by("-created_at"):
        if hasattr(token, "status_at"):  # active, expiring, expired or revoked
            status = token.status_at(now)
        else:
            status = {None: "active", "retired": "revoked"}.get(token.rejection(at=now), "revoked")
        rows.append(
            {
                "id": token.pk,
                "prefix": getattr(token, "prefix", ""),
                "label": getattr(token, "label", ""),
                "streams": list(getattr(token, "streams", None) or []),
                "expires_at": getattr(token, "expires_at", None),
                "retires_at": getattr(token, "retires_at", None),
                "created_at": getattr(token, "created_at", None),
                "last_used_at": getattr(token, "last_used_at", None),
                "last_used_ip": getattr(token, "last_used_ip", None),
                "max_connections": getattr(token, "max_connections", None),
                "status": status,
                "usage": usage.get(token.pk, {"today": empty, "week": empty}),
            }
        )
    return rows, UserLimits.for_user(user)


@never_cache
@login_required
@require_GET
async def tokens(request):
    user = await request.auser()
    rows, limits = await sync_to_async(_token_rows)(user)
    live_total, unavailable = None, False
    try:
        state = get_state()
        for row in rows:
            row["live"] = await state.lease_count(keys.token(row["id"]))
        live_total = await state.lease_count(keys.user(user.pk))
    except StateUnavailable:
        unavailable = True
    context = {
        "tokens": rows,
        "limits": limits,
        "live_total": live_total,
        "unavailable": unavailable,
        "usage_days": USAGE_DAYS,
    }
    return await _render(request, "dashboard/tokens.html", context)
