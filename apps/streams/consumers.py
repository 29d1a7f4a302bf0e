"""One base consumer for the three streams; the subclasses only name their stream.

Lifecycle: accept, authenticate (`credentials`), take the connection leases
(`leases`), join the control groups of its token, user and signed-in session
(`control`: per-process subscriptions, confirmed before the connect goes on;
a change that may have passed between the credential check and the join is
re-checked at once), register the live session (`sessions`), send `welcome`
and the latest snapshot, then hand the socket to the process's fan-out
(`delivery`), which writes every published frame, heartbeats and protocol
pings for all sockets at once. Failures send one `error` frame and close
with a reason from `protocol.Refusal`. On close the leases go back first,
then the live-session entry, then the control groups.

What stays per socket: the handlers of the control messages `control` hands
it (token or user changed, session ended, staff disconnect), the client's
own messages (auth, ping, resync; rate and size limited) and its cleanup.
The socket has no channel-layer channel of its own.
"""

import asyncio
import json
import logging
import time
import uuid

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from apps.accounts.auth import AccountsUnavailable
from stocktracker.lib.state import StateUnavailable, get_state

from . import credentials, leases, protocol, sessions
from .accounting import accounting
from .control import control
from .credentials import REJECTION
from .delivery import hub
from .netaddr import scope_client_ip
from .origin import origin_allowed
from .protocol import Close, Refusal
from .publish import wake_feed
from .transport import link_for, text_frame
from .watchdog import draining, install_sigterm_drain, watchdog

log = logging.getLogger("apps.streams")

# How long a connect may wait on Redis (channel subscription) before 1013.
BACKEND_TIMEOUT = 3.0
_BACKEND_ERRORS = (StateUnavailable, RedisError, OSError, asyncio.TimeoutError)


class ClientError(Exception):
    """Bad client input: answered with an `error` frame; the socket stays open."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def new_connection_id():
    """Sortable by connect time, so 'close the newest' needs no extra lookup."""
    return f"{time.time_ns():016x}{uuid.uuid4().hex[:12]}"


async def _asgi_close(send, link, code):
    if code is not None and code != 1000 and code < 3000 and link is not None:
        link.close(code)  # daphne's ASGI close cannot carry 1013
        return
    message = {"type": "websocket.close"}
    if code is not None:
        message["code"] = code
    await send(message)


def control_groups(grant):
    """The control groups a socket of `grant` joins (see `control`)."""
    groups = [protocol.user_group(grant.user_id)]
    if grant.token_id is not None:
        groups.append(protocol.token_group(grant.token_id))
    elif grant.session is not None:
        groups.append(protocol.session_group(grant.session))
    return groups


class StreamConsumer(AsyncWebsocketConsumer):
    stream = None  # set by subclasses

    # --- ASGI entry ---------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        """Channels' own loop over the ASGI events, plus: refusal at once when the
        process is past its capacity, holds WS_MAX_UNAUTHENTICATED_PER_PROCESS
        sockets not signed in yet, or knows Redis is down, and a 4200 close
        when daphne cancels us on shutdown. Control messages reach the socket
        through the process's `control` subscriptions, not a channel of its own."""
        self.scope = scope
        self.base_send = send
        self.channel_layer = None
        self.channel_name = None
        self.closing = False
        self.cleaned = False
        self.grant = None
        self.lease_keys = []
        self.control_groups = []
        self.topics = ()
        self.tasks = []
        self.link = link_for(scope)
        dog = watchdog()
        busy = dog.overloaded()
        if busy:
            await self._refuse_before_start(receive, Refusal.OVERLOADED, busy)
            return
        # Counted as not signed in until start() grants it, or cleanup; token
        # and anonymous sockets per address too (a session's user is known already).
        user = scope.get("user")
        self.signing_in_ip = None if user is not None and user.is_authenticated else scope_client_ip(scope)
        refusal = dog.signing_in(self, self.signing_in_ip)
        if refusal:
            await self._refuse_before_start(receive, *refusal)
            return
        if not dog.healthy:
            dog.signed_in(self, self.signing_in_ip)
            await self._refuse_before_start(receive, Refusal.UNAVAILABLE, "channel layer unavailable (redis is down)")
            return
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            # Daphne cancels every application on SIGTERM: say "reconnect now"
            # and give the slots back before the process goes.
            await self.shutdown()
            raise
        except _BACKEND_ERRORS as exc:  # Redis lost under a handler
            log.warning("backend failed stream=%s: %s", self.stream, exc)
            await self.refuse(Refusal.UNAVAILABLE)
        finally:
            await self._cleanup()

    async def _refuse_before_start(self, receive, reason, why):
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        watchdog().refused(reason, why, self.scope.get("path"))
        await self.base_send({"type": "websocket.accept"})
        await self.base_send({"type": "websocket.send", "text": protocol.error_frame(reason.error, reason.message)})
        await _asgi_close(self.base_send, self.link, int(reason.close))

    async def send(self, text_data=None, bytes_data=None, close=False):
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except Disconnected:
            # The client went away between our check and the write (daphne
            # marks it disconnected a moment later); its disconnect follows.
            self.closing = True

    async def write(self, text, frame=None, size=None, count=True):
        """One outgoing frame: straight to the socket under daphne, else ASGI."""
        if self.link is not None:
            written = self.link.write(frame or text_frame(text.encode()))
        else:
            await self.send(text_data=text)
            written = not self.closing
        if written and count:
            self.sent += 1
            self.sent_bytes += len(text.encode()) if size is None else size
        return written

    async def close(self, code=None, reason=None):
        await _asgi_close(self.base_send, self.link, code)

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            log.debug("ignored channel message type=%s", message.get("type"))
            return
        # Every ORM call here goes through database_sync_to_async, which cleans
        # up connections itself: skip Channels' aclose_old_connections() hop
        # per message (all such hops share one thread: a connect storm queued on it).
        await handler(message)

    async def websocket_disconnect(self, message):
        # No groups of its own to leave, and no aclose_old_connections() hop (see dispatch).
        await self.disconnect(message["code"])
        raise StopConsumer()

    # --- lifecycle ---------------------------------------------------------------

    async def connect(self):
        self.conn_id = new_connection_id()
        self.authenticating = False  # from credentials to the end of start()
        self.ip = scope_client_ip(self.scope)
        self.origin = credentials.header(self.scope, b"origin")
        self.since_ms = protocol.now_ms()
        self.opened = time.monotonic()
        self.sent = 0
        self.sent_bytes = 0
        self.close_code = None
        self.claimed_token_id = None  # a known token that was refused (usage rejections)
        self.claimed_prefix = None
        self.ready = False  # taking frames from the hub
        self.has_position = None  # (epoch, seq) of the snapshot sent with `welcome`
        self.pending = {}  # kind -> newest frame held back (not ready, or not reading)
        self.backlogged_since = None
        self.ping_nonce = None
        self.slow = False
        self.bucket = (float(settings.WS_INBOUND_BURST), time.monotonic())
        await self.accept()
        if draining():
            await self.refuse(Refusal.RESTARTING)
            return
        watchdog().consumers.add(self)
        if self.link is not None:
            install_sigterm_drain()

        raw = credentials.bearer_token(self.scope) or credentials.query_token(self.scope)
        user = self.scope.get("user")
        if raw is None and user is not None and user.is_authenticated:
            # A cookie is an ambient credential: only pages we serve may use it.
            if not origin_allowed(self.origin, self.scope):
                log.warning(
                    "refused cross-origin session stream=%s ip=%s origin=%r user=%s",
                    self.stream,
                    self.ip,
                    self.origin,
                    user.get_username(),
                )
                await self.refuse(Refusal.ORIGIN_FORBIDDEN)
                return
            self.authenticating = True  # until start() is done: no deadline, no second `auth`
            try:
                mark = control().mark()
                try:
                    session = self.scope.get("session")
                    grant = await credentials.session_grant(user, getattr(session, "session_key", None))
                except AccountsUnavailable:
                    await self.refuse(Refusal.ACCOUNTS_DOWN)
                    return
                if self.closing:
                    return
                if grant is None:
                    await self.refuse(Refusal.SESSION_INACTIVE)
                    return
                await self.start(grant, mark)
            finally:
                self.authenticating = False
            return
        if raw is not None:
            await self.authenticate(raw)
            return
        # Otherwise wait for a first `auth` message.
        self.tasks.append(asyncio.ensure_future(self._auth_deadline()))

    async def _auth_deadline(self):
        await asyncio.sleep(settings.WS_AUTH_TIMEOUT)
        if self.grant is None and not self.authenticating and not self.closing:
            await self.refuse(Refusal.AUTH_TIMEOUT)

    async def authenticate(self, raw):
        # `authenticating` holds until start() is done, so the auth deadline
        # cannot close the socket half-way through taking its leases.
        self.authenticating = True
        try:
            mark = control().mark()
            try:
                grant, reason = await credentials.token_grant(raw, self.stream, self.ip)
            except AccountsUnavailable:
                await self.refuse(Refusal.ACCOUNTS_DOWN)
                return
            if self.closing:
                return
            if grant is None:
                reason, check = reason
                if check is not None and reason != "bad":
                    self.claimed_token_id, self.claimed_prefix = check.token_id, check.token_prefix
                await self.refuse(REJECTION[reason])
                return
            await self.start(grant, mark)
        finally:
            self.authenticating = False

    async def start(self, grant, mark):
        """Take the leases, join the control groups, register the live
        session, subscribe to the stream, send `welcome` and the latest
        snapshot, then stream. `mark`: the control clock read before the
        credential check that produced `grant`. A concurrent task (watchdog,
        SIGTERM drain, auth deadline, a kick) may close the socket at any await
        in here; whatever was taken after its cleanup ran is given back before
        returning."""
        self.limits = leases.limits_for(self.ip, self.stream, grant)
        try:
            full = await leases.acquire(self.conn_id, self.limits)
        except StateUnavailable:
            await self.refuse(Refusal.UNAVAILABLE)
            return
        if full:
            self.claimed_token_id, self.claimed_prefix = grant.token_id, grant.token_prefix
            await self.refuse(Refusal.OVER_LIMIT._replace(message=f"too many connections for this {full}"))
            return
        self.lease_keys = [key for key, _ in self.limits]
        if self.closing:
            await self._release()
            return
        self.grant = grant
        watchdog().signed_in(self, self.signing_in_ip)
        groups = control_groups(grant)
        state = get_state()
        fanout = hub()
        ctl = control()
        try:
            await asyncio.wait_for(ctl.join(self, groups), BACKEND_TIMEOUT)
            if ctl.changed_since(groups, mark) and not self.closing:
                # A change may have gone by between the check and the join: check again.
                refusal = await self._check_again()
                if refusal is not None:
                    await self.refuse(refusal)
                    return
            await sessions.put(self)
            # The worker idles while no stream has subscribers: the first one wakes it. A
            # stream this process already serves has some, so Redis need not be asked.
            local = fanout.topics.get(protocol.stream_group(self.stream))
            if not local and await state.lease_count(protocol.subscriber_key(self.stream)) == 1:
                await wake_feed()
            self.topics = (protocol.stream_group(self.stream),)
            for topic in self.topics:  # before reading the latest: nothing published meanwhile is lost
                await asyncio.wait_for(fanout.join(self, topic), BACKEND_TIMEOUT)
            latest = await state.latest_get(self.stream)
            feed = await state.feed_get()
        except AccountsUnavailable:
            await (self._release() if self.closing else self.refuse(Refusal.ACCOUNTS_DOWN))
            return
        except _BACKEND_ERRORS:
            if self.closing:  # closed meanwhile: refuse() would do nothing
                await self._release()
            else:
                await self.refuse(Refusal.UNAVAILABLE)
            return
        except Exception:
            log.exception("connect failed stream=%s ip=%s", self.stream, self.ip)
            await (self._release() if self.closing else self.refuse(Refusal.UNAVAILABLE))
            return
        if self.closing:
            await self._release()
            return
        limits = {"max_connections": grant.token_max or grant.user_max}
        welcome = protocol.welcome_frame(self.stream, heartbeat_s=settings.WS_HEARTBEAT_INTERVAL, limits=limits)
        await self.send(text_data=welcome)  # through daphne: it completes the handshake's state
        if latest:
            await self.write(latest)
        feed_text = self._feed_frame_if_newer(latest, feed)
        if feed_text:
            await self.write(feed_text)
        await fanout.ready(self, latest)
        if self.closing:
            await self._release()
            return
        await accounting().opened(self)
        if self.closing:
            return  # counted as opened, then closed by the cleanup that ran meanwhile
        sessions.registry().add(self)
        who = {"stream": self.stream, "user": grant.username, "token_prefix": grant.token_prefix or "session"}
        log.info(
            "connect stream=%s user=%s token_prefix=%s ip=%s",
            *who.values(),
            self.ip,
            extra={**who, "ip": self.ip},
        )

    async def _check_again(self):
        """The grant's re-check (the generation-checked token cache: one Redis
        read unless the token changed); the refusal it earns, or None."""
        result = await credentials.shared_check(self.grant, self.stream)
        refusal, _moved = credentials.apply_check(self.grant, result)
        return refusal

    @staticmethod
    def _feed_frame_if_newer(latest, feed):
        """A `feed` frame when the feed's state differs from the snapshot's
        (read from the frame's header, without parsing its data)."""
        if not feed or not feed.get("state"):
            return None
        if latest and protocol.snapshot_feed(latest) == feed["state"]:
            return None
        return protocol.feed_frame(
            feed["state"],
            since_ms=feed.get("since_ms") or protocol.now_ms(),
            detail=feed.get("detail", ""),
            simulated=bool(feed.get("simulated")),
        )

    async def refuse(self, reason):
        """Send one `error` frame, close with the reason's code and give the slots back."""
        if self.closing:
            return
        self.closing = True
        code = int(reason.close)
        self.close_code = code
        accounting().rejected(self, code)
        grant = self.grant
        prefix = (grant.token_prefix or "session") if grant else (getattr(self, "claimed_prefix", None) or "-")
        fields = {
            "stream": self.stream,
            "ip": getattr(self, "ip", "?"),
            "code": code,
            "reason": reason.error,
            "user": grant.username if grant else "-",
            "token_prefix": prefix,
        }
        log.warning("refused stream=%s ip=%s code=%s reason=%s user=%s token_prefix=%s", *fields.values(), extra=fields)
        await self.send(text_data=protocol.error_frame(reason.error, reason.message))
        await self.close(code=code)
        await self._cleanup()

    async def backend_lost(self):
        """Called by the watchdog when Redis stops answering."""
        await self.refuse(Refusal.BACKEND_LOST)

    def too_slow(self, why):
        """Called by delivery for a client that stopped reading (once)."""
        if self.slow or self.closing:
            return
        self.slow = True
        self.tasks.append(asyncio.ensure_future(self._too_slow(why)))

    async def _too_slow(self, why):
        log.warning("closing slow client stream=%s ip=%s why=%s", self.stream, self.ip, why)
        await self.refuse(Refusal.TOO_SLOW)
        if self.link is not None:
            # The close frame cannot get through a full pipe: drop the TCP
            # connection after a moment so its buffers are freed.
            asyncio.get_running_loop().call_later(1.0, self.link.abort)

    async def shutdown(self):
        """Server going away: 4200 ("reconnect now"), slots given back."""
        if not self.closing:
            self.closing = True
            self.close_code = int(Close.RESTARTING)
            try:
                await self.send(text_data=protocol.error_frame(Refusal.RESTARTING.error, Refusal.RESTARTING.message))
                await self.close(code=int(Close.RESTARTING))
            except Exception:  # the transport may already be gone
                log.debug("close on shutdown failed", exc_info=True)
        await self._cleanup()
        await asyncio.sleep(0.05)  # let the reactor flush the close frame

    async def _cleanup(self, code=None):
        if self.cleaned:
            return
        self.cleaned = True
        if hasattr(self, "conn_id"):
            accounting().closed(self, code)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        watchdog().consumers.discard(self)
        watchdog().signed_in(self, getattr(self, "signing_in_ip", None))
        hub().leave(self)
        sessions.registry().remove(self)
        await self._release()

    async def _release(self):
        """Give the leases back and drop the live-session entry first (another
        socket may be waiting for the slot), then leave the control groups
        (local; an unused subscription is dropped in the background). Best
        effort (what Redis does not take back expires on its own) and safe to
        repeat."""
        hub().leave(self)
        if self.lease_keys:
            await leases.release(self.conn_id, self.lease_keys)
            await sessions.drop(self.conn_id)
        control().leave(self)

    async def disconnect(self, code):
        await self._cleanup(code)
        if self.grant is not None:
            fields = {
                "stream": self.stream,
                "user": self.grant.username,
                "token_prefix": self.grant.token_prefix or "session",
                "ip": self.ip,
                "duration_s": round(time.monotonic() - self.opened, 1),
                "code": self.close_code or code,
            }
            log.info(
                "disconnect stream=%s user=%s token_prefix=%s ip=%s duration_s=%.1f code=%s sent=%d",
                *fields.values(),
                self.sent,
                extra={**fields, "sent": self.sent, "sent_bytes": self.sent_bytes},
            )

    # --- live token effects --------------------------------------------------------

    async def recheck(self):
        """Re-validate the token (one check per token per process, shared) and
        the caps now; close if they no longer hold."""
        if self.grant is None or self.closing:
            return
        result = await credentials.shared_check(self.grant, self.stream)
        if self.closing:
            return
        refusal, moved = credentials.apply_check(self.grant, result)
        if refusal is not None:
            await self.refuse(refusal)
            return
        if moved:
            sessions.registry().wake.set()
        await sessions.enforce_caps([self])

    async def token_recheck(self, message):
        await self._recheck_now()

    async def user_recheck(self, message):
        await self._recheck_now()

    async def _recheck_now(self):
        # A handler that raises would end the consumer: log it; the periodic
        # re-check tries again.
        try:
            await self.recheck()
        except Exception:
            log.exception("re-check failed stream=%s ip=%s", self.stream, getattr(self, "ip", "?"))

    async def session_end(self, message):
        """The browser session this socket signed in with was logged out or deleted."""
        await self.refuse(Refusal.SIGNED_OUT)

    async def session_close(self, message):
        """Staff disconnected this socket from the admin."""
        log.warning("kicked stream=%s ip=%s by=%s", self.stream, getattr(self, "ip", "?"), message.get("by", "?"))
        code = int(message.get("code", Close.KICKED))
        await self.refuse(Refusal.KICKED._replace(close=code))

    # --- client messages ----------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if self.closing:
            return
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_INBOUND_BYTES:
            limit = settings.WS_MAX_INBOUND_BYTES
            await self.refuse(Refusal.TOO_LARGE._replace(message=f"messages are limited to {limit} bytes"))
            return
        if not self._take_token():
            await self.refuse(Refusal.FLOODING)
            return
        try:
            await self.handle_message(text_data)
        except ClientError as exc:
            await self.send(text_data=protocol.error_frame(exc.code, exc.message))

    def _take_token(self):
        tokens, last = self.bucket
        now = time.monotonic()
        tokens = min(float(settings.WS_INBOUND_BURST), tokens + (now - last) * settings.WS_INBOUND_RATE)
        if tokens < 1:
            self.bucket = (tokens, now)
            return False
        self.bucket = (tokens - 1, now)
        return True

    async def handle_message(self, text):
        if text is None:
            raise ClientError("bad_message", "send JSON text frames")
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            raise ClientError("bad_message", "not JSON") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "auth":
            if self.grant is not None or self.authenticating:
                raise ClientError("already_authenticated", "this socket is already authenticated")
            raw = message.get("token")
            await self.authenticate(raw if isinstance(raw, str) else "")
        elif self.grant is None:
            await self.refuse(Refusal.AUTH_REQUIRED)
        elif kind == "ping":
            await self.send(text_data=protocol.pong_frame())
        elif kind == "pong":
            pass
        elif kind == "resync":
            try:
                latest = await get_state().latest_get(self.stream)
            except StateUnavailable:
                raise ClientError("unavailable", "snapshot store unavailable; retry later") from None
            if latest:
                await self.write(latest)
        else:
            raise ClientError("unknown_type", "unknown message type")


class MarketConsumer(StreamConsumer):
    stream = "market"


class ForeignConsumer(StreamConsumer):
    stream = "foreign"


class IndexConsumer(StreamConsumer):
    stream = "index"
