"""Sign-in: from what a socket presents to a Grant, one path for every kind.

What may be presented, in order: a Bearer header, `?token=` (old clients),
a Django session (pages we serve, origin-checked), or a first `auth`
message. `presented()` reads the handshake; `grant()` turns a credential
into a `credentials.Grant` or a refusal. The consumer then takes its seat
(leases, control groups, the stream).
"""

import logging
from typing import NamedTuple
from urllib.parse import parse_qs

from apps.accounts.auth import AccountsUnavailable

from . import credentials
from .origin import origin_allowed
from .protocol import Refusal

log = logging.getLogger("apps.streams")


class Token(NamedTuple):
    raw: str


class Session(NamedTuple):
    user: object  # the user Channels' session auth loaded
    session_key: str | None


class Outcome(NamedTuple):
    """A grant, or why not; `claimed`: (token id, prefix) of a known token
    that was refused (its usage counts the rejection)."""

    grant: credentials.Grant | None = None
    refusal: object = None
    claimed: tuple | None = None


def header(scope, wanted):
    for name, value in scope.get("headers", []):
        if name == wanted:
            return value.decode("latin-1")
    return None


def bearer_token(scope):
    value = header(scope, b"authorization")
    if value:
        scheme, _, credential = value.partition(" ")
        if scheme.lower() == "bearer":
            return credential.strip()
    return None


def query_token(scope):
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


def presented(scope, stream, ip):
    """The handshake's credential (Token or Session), a Refusal (a session
    from a page we do not serve), or None: wait for an `auth` message."""
    raw = bearer_token(scope) or query_token(scope)
    if raw is not None:
        return Token(raw)
    user = scope.get("user")
    if user is None or not user.is_authenticated:
        return None
    # A cookie is an ambient credential: only pages we serve may use it.
    origin = header(scope, b"origin")
    if not origin_allowed(origin, scope):
        log.warning(
            "refused cross-origin session stream=%s ip=%s origin=%r user=%s", stream, ip, origin, user.get_username()
        )
        return Refusal.ORIGIN_FORBIDDEN
    return Session(user, getattr(scope.get("session"), "session_key", None))


async def grant(credential, stream, ip) -> Outcome:
    """The grant `credential` earns on `stream`, or the refusal it gets."""
    try:
        if isinstance(credential, Session):
            found = await credentials.session_grant(credential.user, credential.session_key)
            return Outcome(found) if found is not None else Outcome(refusal=Refusal.SESSION_INACTIVE)
        found, why = await credentials.token_grant(credential.raw, stream, ip)
    except AccountsUnavailable:
        return Outcome(refusal=Refusal.ACCOUNTS_DOWN)
    if found is not None:
        return Outcome(found)
    reason, check = why
    claimed = (check.token_id, check.token_prefix) if check is not None and reason != "bad" else None
    return Outcome(refusal=credentials.REJECTION[reason], claimed=claimed)


def session_auth_when_cookie(inner):
    """Channels' session auth, for handshakes that carry a cookie only: API
    clients (Bearer, `?token=`, `auth` message) skip its user lookup, a hop
    onto the one shared sync thread per connect that queued connect storms."""
    from channels.auth import AuthMiddlewareStack
    from django.contrib.auth.models import AnonymousUser

    with_session = AuthMiddlewareStack(inner)
    anonymous = AnonymousUser()

    async def middleware(scope, receive, send):
        if header(scope, b"cookie") is None:
            scope["user"] = anonymous  # in place: each copy of the scope lives as long as the socket
            return await inner(scope, receive, send)
        return await with_session(scope, receive, send)

    return middleware
