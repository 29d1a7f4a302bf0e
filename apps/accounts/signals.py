"""The live-effect contract between accounts and the socket side.

Accounts knows nothing of sockets. After every committed change to a token
or to a user's limits it does two things, in this order, in
`transaction.on_commit` (nothing is announced for a change rolled back):

1. gives the token a new *generation* in shared state, so that every
   process's token cache drops its copy before the next connect or
   re-check (`apps.accounts.auth`);
2. sends one of the signals below (through `send_robust`: a failing
   receiver cannot hide a committed change). `apps.streams` tells the open
   sockets, which re-check and close with the right code.

Caches trust a copy only while its generation is current, so a bump that
shared state did not take (a Redis blip at commit time) must not be lost:
until one succeeds, the token's prefix is *pending* in this process (its
cache reads the database for it), the bump is retried at once within a
short budget, then by a daemon thread until shared state takes it, and the
signals are sent again then. A process that exits with bumps pending tries
once more and logs the prefixes it could not invalidate.

What remains: another process may accept the changed token from its cache
only between the commit and the successful bump, and never for longer than
TOKEN_CACHE_TTL after it loaded its copy (which bounds the case where no
retry can succeed: the changing process died, or a failover lost the
write). Open sockets are then closed by their periodic re-check, at the
latest TOKEN_CACHE_TTL + TOKEN_RECHECK_INTERVAL after the commit.
"""

import atexit
import logging
import threading
import time

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import Signal

from stocktracker.lib import keys

log = logging.getLogger("apps.accounts")

# kwargs: token_id, user_id, change (one of CHANGES).
token_changed = Signal()
# kwargs: user_id. The user's total connection cap, their active flag or their
# password (so their sessions' auth hash) changed.
user_limits_changed = Signal()
# kwargs: session_key. A browser session was logged out or deleted. The key is
# a credential: receivers use it in-process only (digest it before it goes anywhere).
session_ended = Signal()

CHANGES = ("revoked", "rotated", "expiry", "streams", "limits")

# A generation key outlives any cached copy by far; when it expires, caches
# simply reload once.
GENERATION_TTL = 24 * 3600


def run_on_state(fn):
    """Run `await fn(state)` from sync code (admin views, commands, model methods).

    Under daphne a sync view runs in a worker thread and this hops back onto
    the server's event loop, so the process's shared-state client is reused.
    """
    from stocktracker.lib.state import get_state

    async def call():
        return await fn(get_state())

    return async_to_sync(call)()


# Attempts at once, then after these pauses; none starts later than the budget
# after the first. Then the bump is left to the background retrier.
BUMP_RETRY_DELAYS = (0.05, 0.2)
BUMP_FOREGROUND_BUDGET = 0.5
# Background retries: after these pauses, then every last one until it succeeds.
BUMP_BACKGROUND_DELAYS = (0.5, 1.0, 2.0, 5.0)


class PendingBumps:
    """Prefixes whose new generation shared state has not taken yet, in this
    process (module-level `pending_bumps`). `prefix in pending_bumps` makes the
    token cache go to the database; a daemon thread retries deferred bumps."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held = {}  # prefix -> number of unfinished bumps holding it
        self._jobs = []  # [prefixes, resend callback or None, time deferred]
        self._wake = threading.Event()
        self._thread = None

    def __contains__(self, prefix):
        return prefix in self._held

    def __bool__(self):
        return bool(self._held)

    def hold(self, prefixes):
        with self._lock:
            for prefix in prefixes:
                self._held[prefix] = self._held.get(prefix, 0) + 1

    def release(self, prefixes):
        with self._lock:
            for prefix in prefixes:
                left = self._held.get(prefix, 0) - 1
                if left > 0:
                    self._held[prefix] = left
                else:
                    self._held.pop(prefix, None)

    def defer(self, prefixes, resend=None):
        """Keep `prefixes` held until a background retry bumps them, then call `resend`."""
        with self._lock:
            self._jobs.append([list(prefixes), resend, time.monotonic()])
            if self._thread is None:
                self._wake.clear()
                self._thread = threading.Thread(target=self._run, name="token-generation-retry", daemon=True)
                self._thread.start()

    def retry(self):
        """One attempt at every deferred bump; True when none is left."""
        with self._lock:
            jobs = list(self._jobs)
        if not jobs:
            return True
        prefixes = sorted({prefix for job in jobs for prefix in job[0]})
        try:
            _bump(prefixes)
        except Exception as exc:  # noqa: BLE001 - any failure: keep it pending, try again later
            log.warning("still cannot invalidate cached tokens %s: %s", ", ".join(prefixes), exc)
            return False
        with self._lock:
            self._jobs = [job for job in self._jobs if not any(job is done for done in jobs)]
        for job_prefixes, resend, deferred in jobs:
            self.release(job_prefixes)
            log.warning(
                "invalidated cached tokens %s %.1f s late", ", ".join(job_prefixes), time.monotonic() - deferred
            )
            if resend is not None:
                try:
                    resend()
                except Exception:
                    log.exception("could not re-announce the change of tokens %s", ", ".join(job_prefixes))
        return True

    def clear(self):
        """Forget every pending bump and stop the retrier (tests)."""
        with self._lock:
            self._held.clear()
            self._jobs.clear()
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self):
        from django.db import connections

        step = 0
        while True:
            delay = BUMP_BACKGROUND_DELAYS[min(step, len(BUMP_BACKGROUND_DELAYS) - 1)]
            if self._wake.wait(delay):
                self._wake.clear()
            done = self.retry()
            connections.close_all()  # receivers of the re-sent signals may have queried
            step = 0 if done else step + 1
            with self._lock:
                if not self._jobs:
                    self._thread = None
                    return

    def _at_exit(self):
        if self._jobs and not self.retry():
            log.error(
                "exiting with cached tokens not invalidated: %s (other processes may use their cached "
                "copies for up to TOKEN_CACHE_TTL)",
                ", ".join(sorted({prefix for job in self._jobs for prefix in job[0]})),
            )


pending_bumps = PendingBumps()
atexit.register(pending_bumps._at_exit)


def _bump(prefixes):
    names = [keys.token_generation(prefix) for prefix in prefixes]
    run_on_state(lambda state: state.generation_bump(names, GENERATION_TTL))


def bump_generations(prefixes, resend=None):
    """Give `prefixes` new generations. True if shared state took them now.

    Otherwise (after the quick retries) they stay pending in this process and
    are retried in the background, which calls `resend` once they succeed; see
    the module docstring. Never raises.
    """
    prefixes = sorted(set(prefixes))
    if not prefixes:
        return True
    pending_bumps.hold(prefixes)
    started = time.monotonic()
    error = None
    for delay in (*BUMP_RETRY_DELAYS, None):
        try:
            _bump(prefixes)
        except Exception as exc:  # noqa: BLE001 - logged below; a commit callback must not raise
            error = exc
            if delay is None or time.monotonic() - started + delay > BUMP_FOREGROUND_BUDGET:
                break
            time.sleep(delay)
        else:
            pending_bumps.release(prefixes)
            return True
    log.error(
        "could not invalidate cached tokens %s; this process reads them from the database "
        "and retries in the background",
        ", ".join(prefixes),
        exc_info=error,
    )
    pending_bumps.defer(prefixes, resend)
    return False


def announce(*, prefixes=(), token_changes=(), users=()):
    """On commit: new generations for `prefixes`, then `token_changed` for each
    (token_id, user_id, change) and `user_limits_changed` for each user id.
    If the generations can only be bumped later, the signals are sent again then."""
    prefixes, token_changes, users = list(prefixes), list(token_changes), list(users)
    for _, _, change in token_changes:
        if change not in CHANGES:
            raise ValueError(f"unknown token change {change!r}")

    def signals():
        from .models import ApiToken, UserLimits

        for token_id, user_id, change in token_changes:
            _send(token_changed, ApiToken, token_id=token_id, user_id=user_id, change=change)
        for user_id in dict.fromkeys(users):
            _send(user_limits_changed, UserLimits, user_id=user_id)

    def send():
        bump_generations(prefixes, resend=signals if token_changes or users else None)
        signals()

    transaction.on_commit(send)


def _send(signal, sender, **kwargs):
    for receiver, result in signal.send_robust(sender=sender, **kwargs):
        if isinstance(result, Exception):
            shown = {name: ("<secret>" if name == "session_key" else value) for name, value in kwargs.items()}
            log.error("receiver %r failed for %s", receiver, shown, exc_info=result)


def send_session_ended(session_key):
    from django.contrib.sessions.models import Session

    _send(session_ended, Session, session_key=session_key)


def _user_deleted(sender, instance, **kwargs):
    """A deleted user's session sockets close as well (each of their tokens
    announces its own deletion). Sent on commit, like every other change."""
    announce(users=[instance.pk])


post_delete.connect(_user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="accounts.user_deleted")
