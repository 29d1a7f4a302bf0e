"""Who is on a socket: the grant a token or a session earns, and the
re-checks that keep it valid.

A grant is re-checked per token per process, never per socket: sockets of
one token on one stream share one `recheck_token` call (`shared`), and the
periodic re-check (`sessions.Registry`) runs one check per (token, stream).
What a handshake presents is read by `signin`.
"""

import asyncio

from apps.accounts import known, tokens
from apps.accounts.auth import TokenCheck, check_token, recheck_token, session_user_check
from apps.accounts.sessions import SessionCheck, session_check, session_sign_in
from stocktracker.lib import keys

from . import authlimit
from .protocol import Refusal


class Grant:
    """Who is connected and what they may use: a session user or an API token.
    `deadline`: when the token stops working on its own (expiry or end of
    rotation grace, or a session's expiry), as epoch seconds, or None.
    `session`: for a session socket, a digest of its session key
    (`keys.session_name`), never the key itself; `session_key`: the key, kept in
    memory for the session's re-checks only."""

    __slots__ = (
        "deadline",
        "session",
        "session_key",
        "token_id",
        "token_max",
        "token_prefix",
        "user_id",
        "user_max",
        "username",
    )

    def __init__(
        self,
        *,
        user_id,
        username,
        token_id=None,
        token_prefix=None,
        token_max=None,
        user_max=None,
        deadline=None,
        session=None,
        session_key=None,
    ):
        self.user_id = user_id
        self.session = session
        self.session_key = session_key
        self.username = username
        self.token_id = token_id
        self.token_prefix = token_prefix
        self.token_max = token_max
        self.user_max = user_max
        self.deadline = deadline

    def key(self, stream):
        """What one re-check answers for: the token, the browser session (or
        the session user) on one stream."""
        if self.token_id is not None:
            return ("token", self.token_id, stream)
        if self.session_key is not None:
            return ("session", self.session, stream)
        return ("user", self.user_id, stream)


# A refused token's reason -> what the client is told.
REJECTION = {
    "bad": Refusal.BAD_TOKEN,
    "revoked": Refusal.REVOKED,
    "retired": Refusal.RETIRED,
    "expired": Refusal.EXPIRED,
    "stream": Refusal.STREAM_FORBIDDEN,
    "limited": Refusal.LIMITED,
}


def deadline_of(check):
    moments = [moment.timestamp() for moment in (check.expires_at, check.retires_at) if moment is not None]
    return min(moments) if moments else None


LIMITED = TokenCheck(reason="limited")


async def budgeted_check(raw, stream, ip):
    """`check_token` under `ip`'s failed sign-in budget (sockets and the REST
    snapshot alike; see `authlimit`): a token whose prefix is known to be
    real is always checked; any other that needs the database takes a unit
    of the budget first, and past it is `LIMITED`, unasked.

    Concurrent checks of one token on one stream share one check (a
    reconnect storm of a real, uncached token takes one unit at a time,
    never the whole budget). Keyed by the token's digest: a forgery that
    shares a real token's lookup prefix never shares its answer."""
    check = await check_token(raw, stream, ip, load=False)
    if check is not None:
        return check
    key = (tokens.digest(raw), stream)
    return await shared("budgeted", key, lambda: _budgeted_check(raw, stream, ip))


async def _budgeted_check(raw, stream, ip):
    if await known.token_known(tokens.lookup_prefix(raw)):
        return await check_token(raw, stream, ip)
    return await _within_budget(ip, lambda: check_token(raw, stream, ip), lambda check: check.reason == "bad")


async def _within_budget(ip, check, failed):
    """`await check()` for one unit of `ip`'s budget, given back unless
    `failed(result)`; LIMITED, unasked, when no unit is left."""
    taken = await authlimit.reserve(ip)
    if taken is None:
        return LIMITED
    try:
        result = await check()
    except BaseException:
        await authlimit.refund(taken)
        raise
    if not failed(result):
        await authlimit.refund(taken)
    return result


async def token_grant(raw, stream, ip):
    """(Grant, None), or (None, (reason, the failed check)) when refused
    ('limited' when the address is over its failed sign-in budget)."""
    check = await budgeted_check(raw, stream, ip)
    if check is LIMITED:
        return None, ("limited", None)
    if not check.ok:
        return None, (check.reason, check)
    return (
        Grant(
            user_id=check.user_id,
            username=check.username,
            token_id=check.token_id,
            token_prefix=check.token_prefix,
            token_max=check.token_max_connections,
            user_max=check.user_max_connections,
            deadline=deadline_of(check),
        ),
        None,
    )


async def session_grant(session_key, ip):
    """(Grant, None) for the user the session cookie `session_key` signs in,
    with the user's cap and the session's expiry as its deadline; or (None,
    reason): 'signed_out' (the session signs nobody in: forged, expired,
    logged out), 'inactive' (its user is deactivated), 'limited' (`ip` is
    over its failed sign-in budget). A session that signed someone in before
    is always checked; any other takes a unit of the budget, a forgery keeps
    it. Concurrent sign-ins of one session share one check."""
    name = keys.session_name(session_key)
    found = await shared("session", name, lambda: _session_sign_in(session_key, name, ip))
    if found is LIMITED:
        return None, "limited"
    if found is None:
        return None, "signed_out"
    if not found.active:
        return None, "inactive"
    return (
        Grant(
            user_id=found.user_id,
            username=found.username,
            user_max=found.user_max,
            deadline=found.expires_at.timestamp() if found.expires_at else None,
            session=name,
            session_key=session_key,
        ),
        None,
    )


async def _session_sign_in(session_key, name, ip):
    if await known.session_known(name):
        found = await session_sign_in(session_key)
    else:
        found = await _within_budget(ip, lambda: session_sign_in(session_key), lambda found: found is None)
    if found is not None and found is not LIMITED:
        await known.learn_session(name, found.expires_at)
    return found


async def _check(key, grant):
    """One re-check of a grant key: (Refusal or None, TokenCheck, SessionCheck or user cap)."""
    kind, ident, stream = key
    if kind == "token":
        check = await recheck_token(ident, stream)
        if not check.ok:
            return REJECTION[check.reason if check.reason != "bad" else "revoked"], check
        return None, check
    if kind == "session":
        check = await session_check(grant.session_key, grant.user_id)
        if not check.active:
            return Refusal.SESSION_ENDED, check
        return (None if check.signed_in else Refusal.SIGNED_OUT), check
    active, user_max = await session_user_check(ident)
    return (None if active else Refusal.SESSION_ENDED), user_max


_inflight = {}  # (loop, name, key) -> task


async def shared(name, key, factory):
    """`await factory()`, shared by every caller of this process that asks for
    (name, key) while one is running: a token change reaching 1,000 sockets
    costs one check, not 1,000."""
    loop = asyncio.get_running_loop()
    slot = (loop, name, key)
    task = _inflight.get(slot)
    if task is None:
        task = _inflight[slot] = loop.create_task(factory())
        task.add_done_callback(lambda _t: _inflight.pop(slot, None))
    return await asyncio.shield(task)


async def shared_check(grant, stream):
    key = grant.key(stream)
    return await shared("check", key, lambda: _check(key, grant))


def apply_check(grant, result):
    """Update `grant` from a re-check; returns (Refusal or None, deadline moved)."""
    refusal, detail = result
    if refusal is not None:
        return refusal, False
    if isinstance(detail, SessionCheck):
        grant.user_max = detail.user_max
        deadline = detail.expires_at.timestamp() if detail.expires_at else None
        moved, grant.deadline = deadline != grant.deadline, deadline
        return None, moved
    if grant.token_id is None:
        grant.user_max = detail
        return None, False
    grant.token_max = detail.token_max_connections
    grant.user_max = detail.user_max_connections
    deadline = deadline_of(detail)
    moved = deadline != grant.deadline
    grant.deadline = deadline
    return None, moved
