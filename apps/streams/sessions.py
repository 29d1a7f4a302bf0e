"""The live-session registry: every streaming socket of this process, and the
periodic work done for all of them at once.

- Shared state holds one entry per socket (who, what stream, from where, which
  process and that process's control channel: the admin's live-sessions page
  and its "disconnect", sent to that channel with the socket's id).
- Every WS_HEARTBEAT_INTERVAL the process renews all of its sockets' leases and
  entries in batches (`state.renew`, one round trip per 1,000 sockets); nothing
  is renewed per socket.
  A killed process stops renewing, so its slots and entries expire within
  WS_LEASE_TTL.
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

log = logging.getLogger("apps.streams")

PROCESS = f"{socket.gethostname()}:{os.getpid()}"
RENEW_SLICE = 1000  # sockets per renewal round trip
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
    await get_state().session_put(consumer.conn_id, entry(consumer), settings.WS_LEASE_TTL)


async def drop(conn_id):
    try:
        await asyncio.wait_for(get_state().session_drop(conn_id), leases.RELEASE_TIMEOUT)
    except (StateUnavailable, OSError, TimeoutError):
        pass  # the entry expires on its own


class Registry:
    def __init__(self):
        self.sockets = set()
        self.by_key = {}  # Grant.key(stream) -> set of consumers
        self.tasks = []
        self.wake = asyncio.Event()  # a socket with an earlier deadline joined
        self.renewed_at = None

    def add(self, consumer):
        self.start()
        self.sockets.add(consumer)
        self.by_key.setdefault(consumer.grant.key(consumer.stream), set()).add(consumer)
        if consumer.grant.deadline is not None:
            self.wake.set()

    def remove(self, consumer):
        self.sockets.discard(consumer)
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
        while running():
            await asyncio.sleep(settings.WS_HEARTBEAT_INTERVAL)
            try:
                await self.renew()
            except Exception:
                # The watchdog decides about outages; a lease outlives a few failed renewals.
                log.warning("lease renewal failed for %d sockets; next try in %.0f s", len(self.sockets),
                            settings.WS_HEARTBEAT_INTERVAL, exc_info=True)  # fmt: skip

    async def renew(self):
        """Every socket's leases and live-session entry: one round trip per
        RENEW_SLICE sockets, yielding to the event loop in between so that
        10,000 sockets never stall the fan-out."""
        live = [c for c in self.sockets if not c.closing]
        failed = []
        for start in range(0, len(live), RENEW_SLICE):
            part = live[start : start + RENEW_SLICE]
            failed += await get_state().renew(
                [(c.conn_id, leases.limits_for(c.ip, c.stream, c.grant)) for c in part],
                [(c.conn_id, entry(c)) for c in part],
                settings.WS_LEASE_TTL,
            )
            await asyncio.sleep(0)
        self.renewed_at = time.monotonic()
        if failed:
            gone = set(failed)
            for consumer in live:
                if consumer.conn_id in gone:
                    consumer.tasks.append(asyncio.ensure_future(consumer.refuse(Refusal.LIMIT_LOWERED)))

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


_registries = PerLoop(Registry)


def registry() -> Registry:
    """The live-session registry of this event loop (one per daphne process)."""
    return _registries.get()
