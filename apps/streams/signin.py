"""Sign-in: from what a socket presents to a Grant, one path for every kind.

What may be presented, in order: a Bearer header, `?token=` (old clients),
a Django session cookie (pages we serve, origin-checked), or a first `auth`
message. `presented()` reads the handshake without any I/O; `grant()` turns
a credential into a `credentials.Grant` or a refusal, a session cookie as a
token: after admission (counted as signing in, per address too), under the
failed sign-in budget and with the database timeouts. The consumer then
takes its seat (leases, control groups, the stream).
"""

import logging
from typing import NamedTuple
from urllib.parse import parse_qs

from django.conf import settings
from django.http.cookie import parse_cookie

from apps.accounts.auth import AccountsUnavailable

from . import authlimit, credentials
from .origin import origin_allowed
from .protocol import Refusal

log = logging.getLogger("apps.streams")


class Token(NamedTuple):
    raw: str


class Session(NamedTuple):
    session_key: str  # the cookie's value: a credential, never logged


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


def session_cookie(scope):
    """The handshake's session cookie (SESSION_COOKIE_NAME), or None."""
    values = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"cookie"]
    if not values:
        return None
    return parse_cookie("; ".join(values)).get(settings.SESSION_COOKIE_NAME) or None


def presented(scope, stream, ip):
    """The handshake's credential (Token or Session), a Refusal (a session
    cookie from a page we do not serve), or None: wait for an `auth` message.
    No I/O: a cross-site page costs no query."""
    raw = bearer_token(scope) or query_token(scope)
    if raw is not None:
        return Token(raw)
    session_key = session_cookie(scope)
    if session_key is None:
        return None
    # A cookie is an ambient credential: only pages we serve may use it.
    origin = header(scope, b"origin")
    if not origin_allowed(origin, scope):
        log.warning("refused cross-origin session stream=%s ip=%s origin=%r", stream, ip, origin)
        return Refusal.ORIGIN_FORBIDDEN
    return Session(session_key)


# A refused session's reason -> what the client is told.
SESSION_REJECTION = {"signed_out": Refusal.SIGNED_OUT, "inactive": Refusal.SESSION_INACTIVE}


def limited():
    """The refusal of an address over its failed sign-in budget, with when to retry."""
    return Refusal.LIMITED._replace(retry_after=authlimit.retry_after())


async def grant(credential, stream, ip) -> Outcome:
    """The grant `credential` earns on `stream`, or the refusal it gets."""
    try:
        if isinstance(credential, Session):
            found, why = await credentials.session_grant(credential.session_key, ip)
            if found is not None:
                return Outcome(found)
            return Outcome(refusal=limited() if why == "limited" else SESSION_REJECTION[why])
        found, why = await credentials.token_grant(credential.raw, stream, ip)
    except AccountsUnavailable:
        return Outcome(refusal=Refusal.ACCOUNTS_DOWN)
    if found is not None:
        return Outcome(found)
    reason, check = why
    if reason == "limited":
        return Outcome(refusal=limited())
    claimed = (check.token_id, check.token_prefix) if check is not None and reason != "bad" else None
    return Outcome(refusal=credentials.REJECTION[reason], claimed=claimed)
