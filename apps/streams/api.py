"""The protocol's REST twin, under the same checks and budgets as a socket's
sign-in:

- `GET /api/v1/snapshot/<stream>`: byte for byte the stream socket's latest
  `snapshot` frame;
- `GET /api/v2/snapshot?topic=<topic>`: a topic's complete snapshot, with the
  epoch and seq a client can follow its deltas (or resume) from.
"""

from django.conf import settings
from django.http import Http404, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps.accounts.auth import AccountsUnavailable
from stocktracker.lib import catalogue, keys
from stocktracker.lib.state import StateUnavailable

from . import authlimit, snapshots
from .credentials import LIMITED, REJECTION, budgeted_check, session_grant
from .netaddr import request_client_ip
from .protocol import Refusal


def _bearer(request):
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


def _api_error(status, code, message, **headers):
    response = JsonResponse({"type": "error", "code": code, "message": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


async def _viewer(request, stream):
    """(the viewer's lease member, None), or (None, the error response).
    Auth: `Authorization: Bearer <token>` (never ?token=) allowed on `stream`
    (None: any valid token), or the session cookie; either is checked as on
    the sockets, under the address's failed sign-in budget and the database
    timeouts."""
    ip = request_client_ip(request)
    raw = _bearer(request)
    session_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME) if raw is None else None
    try:
        if raw is not None:
            check = await budgeted_check(raw, stream, ip)
            limited, refused = check is LIMITED, None if check.ok else check.reason
        elif session_key:
            # Not request.auser(): it would read the database for every forged cookie, unbudgeted.
            grant, refused = await session_grant(session_key, ip)
            limited = refused == "limited"
        else:
            error = _api_error(
                401, "auth_required", "log in or send Authorization: Bearer <token>", WWW_Authenticate="Bearer"
            )
            return None, error
    except AccountsUnavailable:
        return None, _api_error(503, "unavailable", "sign-in is temporarily unavailable; retry later", Retry_After="5")
    if limited:  # the address used up its failed sign-in budget: no database work
        reason = REJECTION["limited"]
        return None, _api_error(reason.status, reason.error, reason.message, Retry_After=str(authlimit.retry_after()))
    if refused is not None and raw is not None:
        reason = REJECTION.get(refused, REJECTION["bad"])
        error = _api_error(reason.status, reason.error, reason.message, WWW_Authenticate='Bearer error="invalid_token"')
        return None, error
    if refused is not None:
        reason = Refusal.SESSION_INACTIVE if refused == "inactive" else Refusal.SIGNED_OUT
        return None, _api_error(reason.status, reason.error, reason.message)
    return (keys.token(check.token_id) if raw is not None else keys.user(grant.user_id)), None


@never_cache
@require_GET
async def snapshot(request, stream):
    """The latest snapshot of `stream`."""
    if stream not in catalogue.STREAMS:
        raise Http404("unknown stream")
    member, error = await _viewer(request, stream)
    if error is not None:
        return error
    try:
        text = (await snapshots.latest_texts(member, [stream]))[stream]
    except StateUnavailable:
        return _api_error(503, "unavailable", "service temporarily unavailable", Retry_After="5")
    if text is None:
        return _api_error(503, "no_data", "no snapshot yet; the feed is starting", Retry_After="2")
    return HttpResponse(text, content_type="application/json")


@never_cache
@require_GET
async def topic_snapshot(request):
    """The complete snapshot of `?topic=`."""
    name = request.GET.get("topic", "")
    try:
        topic = catalogue.parse_topic(name)
    except catalogue.UnknownTopic:
        return _api_error(404, "unknown_topic", f"no such topic: {name[:60]!r}")
    member, error = await _viewer(request, catalogue.stream_of(topic.family))
    if error is not None:
        return error
    try:
        if not await snapshots.topic_exists(topic):
            return _api_error(404, "unknown_topic", f"no such instrument or index in today's market: {topic.arg!r}")
        text = await snapshots.topic_text(member, str(topic))
    except StateUnavailable:
        return _api_error(503, "unavailable", "service temporarily unavailable", Retry_After="5")
    if text is None:
        return _api_error(503, "no_data", "no snapshot of this topic yet; the feed is starting", Retry_After="2")
    return HttpResponse(text, content_type="application/json")
