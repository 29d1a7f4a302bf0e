"""The protocol's REST twin: `GET /api/v1/snapshot/<stream>`, byte for byte
the socket's latest `snapshot` frame, under the same checks and budgets as a
socket's sign-in."""

from django.http import Http404, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps.accounts.auth import AccountsUnavailable
from stocktracker.lib import catalogue, keys
from stocktracker.lib.state import StateUnavailable

from . import authlimit, snapshots
from .credentials import LIMITED, REJECTION, budgeted_check
from .netaddr import request_client_ip


def _bearer(request):
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


def _api_error(status, code, message, **headers):
    response = JsonResponse({"type": "error", "code": code, "message": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


@never_cache
@require_GET
async def snapshot(request, stream):
    """The latest snapshot of `stream`. Auth: a logged-in session, or
    `Authorization: Bearer <token>` (never ?token=), whose failures count
    against the address's failed sign-in budget, as on the sockets."""
    if stream not in catalogue.STREAMS:
        raise Http404("unknown stream")
    raw = _bearer(request)
    if raw is not None:
        try:
            check = await budgeted_check(raw, stream, request_client_ip(request))
        except AccountsUnavailable:
            return _api_error(503, "unavailable", "sign-in is temporarily unavailable; retry later", Retry_After="5")
        if check is LIMITED:  # the address used up its failed sign-in budget: no database work
            reason = REJECTION["limited"]
            return _api_error(reason.status, reason.error, reason.message, Retry_After=str(authlimit.retry_after()))
        if not check.ok:
            reason = REJECTION.get(check.reason, REJECTION["bad"])
            return _api_error(
                reason.status, reason.error, reason.message, WWW_Authenticate='Bearer error="invalid_token"'
            )
        member = keys.token(check.token_id)
    else:
        user = await request.auser()
        if not user.is_authenticated:
            return _api_error(
                401, "auth_required", "log in or send Authorization: Bearer <token>", WWW_Authenticate="Bearer"
            )
        member = keys.user(user.pk)
    try:
        text = (await snapshots.latest_texts(member, [stream]))[stream]
    except StateUnavailable:
        return _api_error(503, "unavailable", "service temporarily unavailable", Retry_After="5")
    if text is None:
        return _api_error(503, "no_data", "no snapshot yet; the feed is starting", Retry_After="2")
    return HttpResponse(text, content_type="application/json")
