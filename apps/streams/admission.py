"""Admission: which sockets this process takes, decided before any consumer
runs, and the sockets it holds.

`guard` is ASGI middleware on the websocket route (wired in asgi.py). A new
socket is refused at once (accepted, one `error` frame, closed) when:
- the process is past WS_MAX_SOCKETS_PER_PROCESS open sockets, or its event
  loop is more than OVERLOAD_LAG seconds late (1013; the open ones keep
  streaming);
- WS_MAX_UNAUTHENTICATED_PER_PROCESS sockets are not signed in yet (1013),
  or WS_MAX_UNAUTHENTICATED_PER_IP of them come from its address (4100; an
  IPv6 address by its network, `netaddr.address_group`); a session cookie
  counts like a token until its check is done; WS_AUTH_TIMEOUT closes the
  idle ones;
- Redis is known to be down (`watchdog`: 1013);
- the process is draining after SIGTERM (`drain`: 4200).
Refusals are logged once per REFUSAL_LOG_INTERVAL with a count, never one
line per socket.

Around an admitted socket it also answers what the consumer cannot: daphne
cancelling the application on shutdown (4200, "reconnect now", and the
socket's slots given back), and a backing service failing under a handler
(1013).
"""

import asyncio
import logging
import time
import weakref

from django.conf import settings
from redis.exceptions import RedisError

from stocktracker.lib.aio import PerLoop, running
from stocktracker.lib.state import StateUnavailable

from . import drain, gcplan, links, protocol
from .metrics import REJECTIONS
from .netaddr import address_group, scope_client_ip
from .protocol import Refusal
from .watchdog import watchdog

log = logging.getLogger("apps.streams")

TICKET = "stocktracker.admission"  # the socket's Ticket, in its scope
LAG_PROBE = 0.5  # seconds between event-loop lag probes
OVERLOAD_LAG = 2.0  # an event loop this many seconds late refuses new sockets
STALL_LOG = 0.5  # a lag probe this late is logged (once per interval)
REFUSAL_LOG_INTERVAL = 10.0
# What a failing backing service raises under a handler.
BACKEND_ERRORS = (StateUnavailable, RedisError, OSError, asyncio.TimeoutError)


class Ticket:
    """An admitted socket: its address as per-address caps count it, and,
    once its consumer runs, the consumer."""

    __slots__ = ("__weakref__", "ip", "owner")

    def __init__(self, ip):
        self.ip = ip
        self.owner = None


class Admission:
    def __init__(self):
        self.sockets = weakref.WeakSet()  # consumers of the open sockets
        # Sockets not signed in yet (waiting for `auth`, or being checked):
        # capped per process, so idle or forged sockets cannot pile up.
        self.unauthenticated = weakref.WeakSet()
        self.unauthenticated_by_ip = {}  # ip -> WeakSet of Tickets
        self.lag = 0.0  # how late the last lag probe woke, seconds
        self.lag_task = None
        self.refusals = {}  # why -> count since the last log line
        self.refusals_logged = 0.0
        self.lag_logged = 0.0
        self.watching = False

    def start(self):
        gcplan.watch()
        if self.lag_task is None or self.lag_task.done():
            self.lag_task = asyncio.ensure_future(self._probe_lag())
        if not self.watching:
            self.watching = True
            watchdog().on_lost.append(self._backend_lost)

    # --- the checks -----------------------------------------------------------------

    def overloaded(self):
        """Why this process takes no new socket now, or None."""
        open_now = len(self.sockets)
        if open_now >= settings.WS_MAX_SOCKETS_PER_PROCESS:
            return f"process at capacity ({open_now} sockets, WS_MAX_SOCKETS_PER_PROCESS)"
        if self.lag > OVERLOAD_LAG:
            return f"event loop {self.lag:.1f} s behind"
        return None

    def signing_in(self, ticket):
        """Count `ticket` as not signed in yet and return None, or (refusal,
        why) past WS_MAX_UNAUTHENTICATED_PER_PROCESS, or past the per-IP cap
        of such sockets from its address."""
        waiting = len(self.unauthenticated)
        if waiting >= settings.WS_MAX_UNAUTHENTICATED_PER_PROCESS:
            return Refusal.SIGN_IN_FULL, f"{waiting} sockets not signed in yet (WS_MAX_UNAUTHENTICATED_PER_PROCESS)"
        ip = ticket.ip
        from_ip = self.unauthenticated_by_ip.get(ip) if ip is not None else None
        if from_ip is not None and len(from_ip) >= settings.WS_MAX_UNAUTHENTICATED_PER_IP:
            why = f"{len(from_ip)} sockets from one address not signed in yet (WS_MAX_UNAUTHENTICATED_PER_IP)"
            return Refusal.OVER_LIMIT._replace(message="too many connections for this ip"), why
        self.unauthenticated.add(ticket)
        if ip is not None:
            self.unauthenticated_by_ip.setdefault(ip, weakref.WeakSet()).add(ticket)
        return None

    def signed_in(self, ticket):
        """`ticket` is signed in or gone: it stops counting (safe to repeat)."""
        if ticket is None:
            return
        self.unauthenticated.discard(ticket)
        found = self.unauthenticated_by_ip.get(ticket.ip) if ticket.ip is not None else None
        if found is not None:
            found.discard(ticket)
            if not found:
                del self.unauthenticated_by_ip[ticket.ip]

    def refusal(self, ticket):
        """(reason, why) for refusing a new socket now, or None (then `ticket` counts as signing in)."""
        busy = self.overloaded()
        if busy:
            return Refusal.OVERLOADED, busy
        refused = self.signing_in(ticket)
        if refused:
            return refused
        if not watchdog().healthy:
            self.signed_in(ticket)
            return Refusal.UNAVAILABLE, "channel layer unavailable (redis is down)"
        if drain.draining():
            self.signed_in(ticket)
            return Refusal.RESTARTING, "draining (SIGTERM)"
        return None

    def refused(self, reason, why, path):
        """Count a refusal before start; one log line per interval with the counts."""
        stream = (path or "").strip("/").split("/")[-1] or "?"
        REJECTIONS.labels(stream, str(int(reason.close))).inc()
        kind = reason.error
        self.refusals[kind] = self.refusals.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.refusals_logged >= REFUSAL_LOG_INTERVAL:
            counts = ", ".join(f"{k}: {v}" for k, v in self.refusals.items())
            log.warning("refusing new sockets with %d (%s); last: %s", int(reason.close), counts, why)
            self.refusals = {}
            self.refusals_logged = now

    # --- the sockets it holds ----------------------------------------------------------

    def admitted(self, consumer):
        """The consumer of an admitted socket runs: it counts as open, and
        the guard can reach it at shutdown."""
        ticket = consumer.scope.get(TICKET)
        if ticket is not None:
            ticket.owner = consumer
        self.sockets.add(consumer)

    async def _backend_lost(self):
        """Redis is down (the watchdog tripped): close every socket with 1013."""
        await asyncio.gather(*(c.backend_lost() for c in list(self.sockets)), return_exceptions=True)

    async def _probe_lag(self):
        loop = asyncio.get_running_loop()
        while running():
            before = loop.time()
            await asyncio.sleep(LAG_PROBE)
            self.lag = max(0.0, loop.time() - before - LAG_PROBE)
            gcplan.apply()
            if self.lag > STALL_LOG and loop.time() - self.lag_logged >= REFUSAL_LOG_INTERVAL:
                self.lag_logged = loop.time()
                log.warning("event loop stalled %.2f s (%d sockets)", self.lag, len(self.sockets))


_admissions = PerLoop(Admission)


def admission() -> Admission:
    """The admission of this event loop (one per daphne process)."""
    found = _admissions.get()
    found.start()
    return found


def ticket_of(scope):
    return scope.get(TICKET)


def guard(app):
    """ASGI middleware on the websocket route: refuse what this process will
    not take, and look after the sockets it does (see the module docstring)."""

    async def middleware(scope, receive, send):
        if scope["type"] != "websocket":
            return await app(scope, receive, send)
        gate = admission()
        # Every handshake, a session cookie's too, is signing in until its check is done.
        ticket = Ticket(address_group(scope_client_ip(scope)))
        refused = gate.refusal(ticket)
        if refused is not None:
            await _refuse_handshake(scope, receive, send, *refused)
            return
        if links.link_for(scope) is not None:
            drain.install(lambda: gate.sockets)
        scope[TICKET] = ticket
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            # Daphne cancels every application on SIGTERM: say "reconnect now"
            # and give the slots back before the process goes.
            if ticket.owner is not None:
                await ticket.owner.shutdown()
            raise
        except BACKEND_ERRORS as exc:
            log.warning("backend failed path=%s: %s", scope.get("path"), exc)
            if ticket.owner is not None:
                await ticket.owner.refuse(Refusal.UNAVAILABLE)
        finally:
            gate.signed_in(ticket)
            if ticket.owner is not None:
                await ticket.owner.cleanup()

    return middleware


async def _refuse_handshake(scope, receive, send, reason, why):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    admission().refused(reason, why, scope.get("path"))
    await send({"type": "websocket.accept"})
    text = protocol.error_frame(reason.error, reason.message, reason.retry_after)
    await send({"type": "websocket.send", "text": text})
    await links.close(send, links.link_for(scope), int(reason.close))
