"""The live-session registry: every streaming socket of this process, and the
periodic work done for all of them at once.

- Shared state holds one entry per socket (who, what stream, from where, which
  process and that process's control channel: the admin's live-sessions page
  and its "disconnect", sent to that channel with the socket's id).
- Every WS_HEARTBEAT_INTERVAL the process renews all of its sockets' leases and
  entries in batches (`state.renew`, one round trip per RENEW_SLICE sockets); nothing
  is renewed per socket.
  A killed process stops renewing, so its slots and entries expire within
  WS_LEASE_TTL. A renewal that fails is retried sooner; a socket is closed
  only once its lease has run out without being renewed (one failed round
  trip never closes a socket whose lease still has life left), and a
  released lease is never renewed back into existence (`state.renew`).
  Every STORE_CHECK seconds it also looks whether Redis lost its data (a
  restart without persistence, a flush): then every lease and entry is
  written again at once, and the feed woken, so that limits hold and the
  feed sees its subscribers within seconds, not at the next interval.
- Every TOKEN_RECHECK_INTERVAL, and at a grant's own deadline (a token's
  expiry or end of rotation grace, a browser session's expiry), each (token
  or session, stream) of this process is re-checked once and the answer
  applied to all of its sockets; lowered caps close the newest.
"""

import asyncio
import logging
import os
import socket
import time

from django.conf import settings

from apps.accounts.auth import AccountsUnavailable
from stocktracker.lib.aio import PerLoop, running
from stocktracker.lib.state import StateUnavailable, get_state

from . import leases
from .control import control
from .credentials import apply_check, shared, shared_check
from .protocol import Refusal
from .publish import wake_feed

log = logging.getLogger("apps.streams")

PROCESS = f"{socket.gethostname()}:{os.getpid()}"
RENEW_SLICE = 250  # sockets per renewal round trip (~10 ms of the event loop each)
RENEW_RETRY = 2.0  # first retry of a failed renewal; doubles up to WS_HEARTBEAT_INTERVAL
STORE_CHECK = 2.0  # seconds between looks at whether Redis lost its data
RECHECK_RETRY = 1.0  # first retry of a failed re-check; doubles up to TOKEN_RECHECK_INTERVAL


def entry(consumer):
    grant = consumer.grant
    return {
        "id": consumer.conn_id,
        "channel": control().channel,  # the process's: kicks name the socket by its id
        "user": grant.username,
        "user_id": grant.user_id,
        "token_prefix": grant.token_prefix or "",
        "stream": consumer.stream,
        "ip": consumer.ip,
        "since_ms": consumer.since_ms,
        "sent": consumer.sent,
        "process": PROCESS,
    }


async def put(consumer):
    await get_state().entry_put(consumer.conn_id, entry(consumer), settings.WS_LEASE_TTL)


async def drop(conn_id):
    try:
        await asyncio.wait_for(get_state().entry_drop(conn_id), leases.RELEASE_TIMEOUT)
    except (StateUnavailable, OSError, TimeoutError):
        pass  # the entry expires on its own


class Registry:
    def __init__(self):
        self.sockets = set()
        self.by_key = {}  # Grant.key(stream) -> set of consumers
        self.tasks = []
        self.wake = asyncio.Event()  # a socket with an earlier deadline joined
        self.renewed_at = None
        self.store = None  # the store's incarnation at the last look
        self.lease_until = {}  # conn_id -> monotonic time its lease runs out unless renewed
        self.unrenewed = {}  # conn_id -> Refusal to close with if its lease runs out

    def add(self, consumer):
        self.start()
        self.sockets.add(consumer)
        # Taken after `opened`: the lease in Redis lasts at least this long.
        self.lease_until[consumer.conn_id] = getattr(consumer, "opened", time.monotonic()) + settings.WS_LEASE_TTL
        self.by_key.setdefault(consumer.grant.key(consumer.stream), set()).add(consumer)
        if consumer.grant.deadline is not None:
            self.wake.set()

    def remove(self, consumer):
        self.sockets.discard(consumer)
        conn_id = getattr(consumer, "conn_id", None)
        self.lease_until.pop(conn_id, None)
        self.unrenewed.pop(conn_id, None)
        grant = getattr(consumer, "grant", None)
        if grant is not None:
            key = grant.key(consumer.stream)
            group = self.by_key.get(key)
            if group is not None:
                group.discard(consumer)
                if not group:
                    del self.by_key[key]

    def start(self):
        if not self.tasks or any(task.done() for task in self.tasks):
            for task in self.tasks:
                task.cancel()
            self.tasks = [asyncio.ensure_future(self._renew_loop()), asyncio.ensure_future(self._recheck_loop())]

    # --- renewal -----------------------------------------------------------------

    async def _renew_loop(self):
        retry = None  # seconds to the next try while renewals fail
        due = time.monotonic() + self._renew_wait(retry)
        await self._store_lost()  # the incarnation the first leases were written in
        while running():
            await asyncio.sleep(max(0.0, min(STORE_CHECK, due - time.monotonic())))
            lost = await self._store_lost()
            if not lost and time.monotonic() < due:
                continue
            try:
                await self.renew()
                if lost:
                    await wake_feed()  # it may be idling: its subscriber counts were gone
            except Exception as exc:  # noqa: BLE001 - the watchdog decides about outages
                retry = _next_retry(retry)
                log.warning("lease renewal failed for %d sockets (%s); next try in %.1f s", len(self.sockets),
                            exc, retry)  # fmt: skip
            else:
                retry = _next_retry(retry) if self.unrenewed else None
            self.expire()
            due = time.monotonic() + self._renew_wait(retry)

    async def _store_lost(self):
        """True when Redis lost its data since the last look (its incarnation changed)."""
        try:
            current = await get_state().store_incarnation()
        except Exception:  # noqa: BLE001 - Redis away: the renewal's own failures say so
            return False
        seen, self.store = self.store, current
        if seen is None or seen == current:
            return False
        log.warning("redis lost its data: writing the leases and entries of %d sockets again", len(self.sockets))
        return True

    def _renew_wait(self, retry):
        """The next renewal: at the interval, sooner while renewals fail, and
        no later than the moment an unrenewed lease runs out."""
        if retry is None:
            return settings.WS_HEARTBEAT_INTERVAL
        now = time.monotonic()
        ids = self.unrenewed or self.lease_until  # a failed round trip renewed nobody
        soonest = min((self.lease_until[c] for c in ids if c in self.lease_until), default=now + retry)
        return max(0.0, min(retry, soonest - now))

    def expire(self):
        """Close the sockets whose leases ran out without a renewal."""
        now = time.monotonic()
        for consumer in list(self.sockets):
            until = self.lease_until.get(consumer.conn_id)
            if consumer.closing or until is None or until > now:
                continue
            refusal = self.unrenewed.get(consumer.conn_id, Refusal.UNAVAILABLE)
            log.warning("lease of stream=%s ip=%s ran out without renewal: closing with %s", consumer.stream,
                        consumer.ip, int(refusal.close))  # fmt: skip
            consumer.tasks.append(asyncio.ensure_future(consumer.refuse(refusal)))

    async def renew(self):
        """Every socket's leases and live-session entry: one round trip per
        RENEW_SLICE sockets, yielding to the event loop in between so that
        10,000 sockets never stall the fan-out. A socket whose lease is not
        renewed keeps its old deadline (`expire` closes it then)."""
        live = [c for c in self.sockets if not c.closing]
        failed = []
        for start in range(0, len(live), RENEW_SLICE):
            part = live[start : start + RENEW_SLICE]
            sent = time.monotonic()  # the lease in Redis runs out no sooner than this + TTL
            lost = set(
                await get_state().renew(
                    [(c.conn_id, leases.limits_for(c.ip, c.stream, c.grant), entry(c)) for c in part],
                    settings.WS_LEASE_TTL,
                )
            )
            for consumer in part:
                if consumer.conn_id in lost:
                    failed.append(consumer)
                elif consumer.conn_id in self.lease_until:
                    self.lease_until[consumer.conn_id] = sent + settings.WS_LEASE_TTL
                    self.unrenewed.pop(consumer.conn_id, None)
            await asyncio.sleep(0)
        self.renewed_at = time.monotonic()
        for consumer in failed:
            if consumer.conn_id in self.lease_until:
                self.unrenewed[consumer.conn_id] = Refusal.LIMIT_LOWERED

    # --- re-checks ---------------------------------------------------------------

    def _next_wait(self, due):
        """Seconds to the next re-check: the interval, or sooner at a deadline
        (a deadline already past waits RECHECK_RETRY, never a busy loop)."""
        wait = due - time.monotonic()
        deadlines = []
        for group in self.by_key.values():
            live = next((c for c in group if not c.closing), None)
            if live is not None and live.grant.deadline:
                deadlines.append(live.grant.deadline)
        if deadlines:
            left = min(deadlines) - time.time() + 0.05
            wait = min(wait, left if left > 0 else RECHECK_RETRY)
        return max(0.0, wait)

    async def _recheck_loop(self):
        interval = settings.TOKEN_RECHECK_INTERVAL
        due = time.monotonic() + interval
        retry = None
        while running():
            wait = self._next_wait(due)
            if retry is not None:
                wait = max(wait, retry)  # a passed deadline must not turn failures into a busy loop
            self.wake.clear()
            # asyncio.wait, not wait_for: on 3.11 wait_for can turn the task's
            # own cancellation into a TimeoutError, and the loop would never end.
            waiter = asyncio.ensure_future(self.wake.wait())
            try:
                done, _ = await asyncio.wait({waiter}, timeout=wait)
            finally:
                waiter.cancel()
            if done:
                continue
            everything = time.monotonic() >= due
            if everything:
                due = time.monotonic() + interval
            try:
                await self.recheck(everything)
            except AccountsUnavailable:
                retry = min(interval, 2 * retry if retry else RECHECK_RETRY)
                log.warning("re-check unavailable (accounts database); retrying in %.0f s", retry)
            except Exception:
                retry = min(interval, 2 * retry if retry else RECHECK_RETRY)
                log.exception("re-check failed; retrying in %.0f s", retry)
            else:
                retry = None

    async def recheck(self, everything=True):
        """Re-check every (token, stream) of this process, or only those whose deadline passed."""
        now = time.time()
        for key, group in list(self.by_key.items()):
            if not group:
                continue
            grant = next(iter(group)).grant
            if everything or (grant.deadline is not None and grant.deadline <= now):
                await self.recheck_key(key)

    async def recheck_key(self, key):
        group = self.by_key.get(key)
        if not group:
            return
        result = await shared_check(next(iter(group)).grant, key[2])
        for consumer in list(group):
            refusal, _moved = apply_check(consumer.grant, result)
            if refusal is not None:
                await consumer.refuse(refusal)
        group = self.by_key.get(key)
        if group:
            await enforce_caps(group)
        self.wake.set()  # deadlines may have moved


async def enforce_caps(group):
    """Close this process's sockets of one grant that rank past a lowered cap."""
    group = [c for c in group if not c.closing]
    if not group:
        return
    grant = group[0].grant
    over = await shared("caps", grant.key(group[0].stream), lambda: leases.over_cap(grant))
    for consumer in group:
        kind = over.get(consumer.conn_id)
        if kind is not None:
            await consumer.refuse(Refusal.LIMIT_LOWERED._replace(message=f"connection limit for this {kind} lowered"))


def _next_retry(retry):
    return min(settings.WS_HEARTBEAT_INTERVAL, 2 * retry if retry else RENEW_RETRY)


_registries = PerLoop(Registry)


def registry() -> Registry:
    """The live-session registry of this event loop (one per daphne process)."""
    return _registries.get()
