"""Connection limits as Redis leases: one per socket in every set it counts in
(per IP, token, user, and the stream's subscriber set).

Taking them is one script call (`state.lease_acquire`), so exactly N sockets
are admitted under any number of parallel connects on any number of
processes. Each lease expires WS_LEASE_TTL after its last renewal; the
process renews all of its sockets' leases in one call per interval
(`apps.streams.sessions.Registry`), so a killed process's slots free
themselves within the TTL.

Leases never leak or linger: a release is handed to the process's releaser,
which batches releases into one script call, retries through a Redis blip
and is not cancelled with the socket (daphne cancels a consumer that outlives
its close timeout). An acquire that fails, times out or is cancelled may still
have run in Redis, so its connection id is released all the same; the
release is remembered in Redis, so a late acquire or renewal cannot bring the
lease back.
"""

import asyncio
import logging
import time

from django.conf import settings

from stocktracker.lib import keys
from stocktracker.lib.aio import PerLoop, running
from stocktracker.lib.state import StateUnavailable, get_state

from .netaddr import address_group

log = logging.getLogger("apps.streams")

RELEASE_TIMEOUT = 1.0  # how long a closing socket waits for its release (it goes on after)
RELEASE_RETRY = 0.5  # first retry of a failed release batch; doubles up to RELEASE_RETRY_MAX
RELEASE_RETRY_MAX = 5.0


def limits_for(ip, stream, grant):
    """[(lease set, cap or None)] for a socket; the index of a failed one names it.

    The per-IP cap is for token traffic: a session (dashboard) socket counts
    against its user's cap and its session's, so twenty staff behind one
    office address can each keep the dashboard open."""
    limits = [(keys.subscribers(stream), None)]
    per_ip = (keys.ip(address_group(ip)), settings.WS_MAX_CONNECTIONS_PER_IP)
    if grant.token_id is not None:
        limits.insert(0, per_ip)
        limits.append((keys.token(grant.token_id), grant.token_max))
    elif grant.session is not None:
        limits.append((keys.session(grant.session), settings.WS_MAX_CONNECTIONS_PER_SESSION))
    else:  # a session socket whose session has no key: nothing narrower than the address to count by
        limits.insert(0, per_ip)
    limits.append((keys.user(grant.user_id), grant.user_max))
    return limits


async def acquire(conn_id, limits):
    """None when every lease was taken, else the name of the full set ("ip",
    "token", "user"). Raises StateUnavailable. Whatever goes wrong on the way
    (a timeout, a cancellation), the connection id is released: Redis may have
    run the script after we stopped waiting for its answer."""
    names = [name for name, _ in limits]
    try:
        failed = await get_state().lease_acquire(conn_id, limits, settings.WS_LEASE_TTL)
    except BaseException:
        releaser().release(conn_id, names)
        raise
    if failed < 0:  # released meanwhile (the socket is already closing)
        raise StateUnavailable(f"connection {conn_id} was released while taking its leases")
    if failed:
        return keys.kind_of(limits[failed - 1][0])
    return None


async def release(conn_id, names):
    """Give the leases (and the live-session entry) back, for good. Waits up
    to RELEASE_TIMEOUT; the release itself goes on in the background until
    Redis takes it or the leases would have expired anyway."""
    done = releaser().release(conn_id, names)
    try:
        await asyncio.wait_for(asyncio.shield(done), RELEASE_TIMEOUT)
    except (TimeoutError, StateUnavailable, OSError):
        pass


class Releaser:
    """One per event loop: every release of this process, batched."""

    def __init__(self):
        self.pending = {}  # conn_id -> (lease names, future, first asked, monotonic)
        self.wake = asyncio.Event()
        self.task = None

    def release(self, conn_id, names):
        found = self.pending.get(conn_id)
        if found is not None:
            merged = list(dict.fromkeys([*found[0], *names]))
            self.pending[conn_id] = (merged, found[1], found[2])
            return found[1]
        done = asyncio.get_running_loop().create_future()
        self.pending[conn_id] = (list(names), done, time.monotonic())
        self.wake.set()
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())
        return done

    async def _run(self):
        retry = RELEASE_RETRY
        while running():
            if not self.pending:
                self.wake.clear()
                await self.wake.wait()
                continue
            batch, self.pending = self.pending, {}
            try:
                await get_state().lease_release_many(
                    [(conn_id, names) for conn_id, (names, _, _) in batch.items()], settings.WS_LEASE_TTL
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: keep the batch and retry
                now = time.monotonic()
                for conn_id, item in batch.items():
                    if now - item[2] < settings.WS_LEASE_TTL:  # after that they have expired anyway
                        self.pending.setdefault(conn_id, item)
                    elif not item[1].done():
                        item[1].set_exception(StateUnavailable(str(exc)))
                log.warning("releasing %d leases failed (%s); retrying in %.1f s", len(batch), exc, retry)
                await asyncio.sleep(retry)
                retry = min(RELEASE_RETRY_MAX, retry * 2)
                continue
            retry = RELEASE_RETRY
            for _, done, _ in batch.values():
                if not done.done():
                    done.set_result(None)


_releasers = PerLoop(Releaser)


def releaser() -> Releaser:
    return _releasers.get()


async def over_cap(grant):
    """Connection ids past a lowered cap of this grant's token or user, newest
    first to go: ids sort by connect time, so every process agrees on which
    sockets are over without talking to the others. One count per cap; the
    members are fetched only when over."""
    caps = [(keys.user(grant.user_id), grant.user_max)]
    if grant.token_id is not None:
        caps.insert(0, (keys.token(grant.token_id), grant.token_max))
    state = get_state()
    over = {}
    for key, cap in caps:
        if cap is None:
            continue
        try:
            if await state.lease_count(key) <= cap:
                continue
            members = await state.lease_members(key)
        except StateUnavailable:
            continue
        for conn_id in members[cap:]:
            over.setdefault(conn_id, keys.kind_of(key))
    return over
