"""The live-effect contract between accounts and the socket side.

Accounts knows nothing of sockets. After every committed change to a token or
to a user's limits it does two things, in this order:

1. gives the token a new *generation* in shared state, so that every
   process's token cache drops its copy before the next connect
   (see `apps.accounts.auth`);
2. sends one of the signals below. `apps.streams` connects receivers that
   tell the open sockets, which re-check and close with the right code.

Both happen in `transaction.on_commit`: nothing is announced for a change that
is rolled back, and a receiver that re-reads the database sees the change.
Receivers run through `send_robust`: a failing receiver is logged and cannot
undo or hide a change that is already committed.
"""

import logging

from asgiref.sync import async_to_sync
from django.db import transaction
from django.dispatch import Signal

log = logging.getLogger("apps.accounts")

# kwargs: token_id, user_id, change (one of CHANGES).
token_changed = Signal()
# kwargs: user_id. The user's total connection cap (or their active flag) changed.
user_limits_changed = Signal()

CHANGES = ("revoked", "rotated", "expiry", "streams", "limits")

# A generation key outlives any cached copy by far; when it expires, caches
# simply reload once.
GENERATION_TTL = 24 * 3600


def generation_key(prefix):
    """Shared-state key whose value changes whenever the token `prefix` changes."""
    return f"token:{prefix}"


def run_on_state(fn):
    """Run `await fn(state)` from sync code (admin views, commands, model methods).

    Under daphne a sync view runs in a worker thread and this hops back onto
    the server's event loop, so the process's shared-state client is reused.
    """
    from apps.streams.state import get_state

    async def call():
        return await fn(get_state())

    return async_to_sync(call)()


def bump_generations(prefixes):
    prefixes = sorted(set(prefixes))
    if not prefixes:
        return
    keys = [generation_key(prefix) for prefix in prefixes]
    try:
        run_on_state(lambda state: state.generation_bump(keys, GENERATION_TTL))
    except Exception:
        log.exception("could not invalidate cached tokens %s", ", ".join(prefixes))


def announce(*, prefixes=(), token_changes=(), users=()):
    """On commit: new generations for `prefixes`, then `token_changed` for each
    (token_id, user_id, change) and `user_limits_changed` for each user id."""
    prefixes, token_changes, users = list(prefixes), list(token_changes), list(users)
    for _, _, change in token_changes:
        if change not in CHANGES:
            raise ValueError(f"unknown token change {change!r}")

    def send():
        from .models import ApiToken, UserLimits

        bump_generations(prefixes)
        for token_id, user_id, change in token_changes:
            _send(token_changed, ApiToken, token_id=token_id, user_id=user_id, change=change)
        for user_id in dict.fromkeys(users):
            _send(user_limits_changed, UserLimits, user_id=user_id)

    transaction.on_commit(send)


def _send(signal, sender, **kwargs):
    for receiver, result in signal.send_robust(sender=sender, **kwargs):
        if isinstance(result, Exception):
            log.error("receiver %r failed for %s", receiver, kwargs, exc_info=result)
