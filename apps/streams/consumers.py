"""The socket of one stream, as Channels sees it.

The socket was admitted already (`admission`). `connect` accepts it and signs
it in (`signin`: a token or a session, now or from a first `auth` message
within WS_AUTH_TIMEOUT); `start` takes its seat: the connection leases
(`leases`), the control groups of its token, user and signed-in session
(`control`; a change that may have passed between the credential check and
the join is re-checked at once), the live-session entry (`sessions`), then
`welcome`, the latest snapshot and the process's fan-out (`delivery`), which
writes every published frame, heartbeats and pings through the socket's
`Subscriber`. A refusal sends one `error` frame and closes with a reason from
`protocol.Refusal`. On close the leases go back first, then the live-session
entry, then the control groups.

Per socket there are only the handlers: of the control messages `control`
hands it (token or user changed, session ended, staff disconnect) and of the
client's own messages (auth, ping, resync; rate and size limited). The
socket has no channel-layer channel of its own.
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

from apps.accounts.auth import AccountsUnavailable
from stocktracker.lib import keys
from stocktracker.lib.state import StateUnavailable, get_state

from . import credentials, leases, links, protocol, sessions, signin
from .accounting import accounting
from .admission import BACKEND_ERRORS, admission, ticket_of
from .control import control, groups_of
from .delivery import Subscriber, hub
from .netaddr import scope_client_ip
from .protocol import Close, Refusal
from .publish import wake_feed

log = logging.getLogger("apps.streams")

BACKEND_TIMEOUT = 3.0  # how long a connect may wait on Redis (channel subscription) before 1013
RESYNC_READ_EVERY = 1.0  # seconds between a socket's Redis reads for `resync` (when the hub has none)


class ClientError(Exception):
    """Bad client input: answered with an `error` frame; the socket stays open."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def new_connection_id():
    """Sortable by connect time, so 'close the newest' needs no extra lookup."""
    return f"{time.time_ns():016x}{uuid.uuid4().hex[:12]}"


class StreamConsumer(AsyncWebsocketConsumer):
    channel_layer_alias = None  # no channel per socket: control messages come through `control`

    def __init__(self, stream):
        super().__init__()
        self.stream = stream
        self.closing = False
        self.cleaned = False
        self.grant = None
        self.lease_keys = []
        self.control_groups = []
        self.tasks = []
        self.authenticating = False  # from credentials to the end of start()
        self.close_code = None
        self.claimed_token_id = None  # a known token that was refused (usage rejections)
        self.claimed_prefix = None
        self.resync_read_at = -RESYNC_READ_EVERY

    async def dispatch(self, message):
        # Channels hops onto the one shared database thread before every
        # handler (close_old_connections); our ORM calls clean up after
        # themselves, and a connect storm, or a hung database, must not
        # queue every socket's messages on that thread.
        handler = getattr(self, get_handler_name(message), None)
        if handler is not None:
            await handler(message)

    async def websocket_disconnect(self, message):
        # As Channels' own, without its database hop (see dispatch).
        await self.disconnect(message["code"])
        raise StopConsumer()

    # --- lifecycle ---------------------------------------------------------------

    @property
    def sent(self):
        return self.subscriber.sent

    @property
    def sent_bytes(self):
        return self.subscriber.sent_bytes

    async def connect(self):
        self.conn_id = new_connection_id()
        self.ip = scope_client_ip(self.scope)
        self.since_ms = protocol.now_ms()
        self.opened = time.monotonic()
        self.subscriber = Subscriber(links.link_for(self.scope), self.base_send, self.too_slow)
        self.bucket = (float(settings.WS_INBOUND_BURST), time.monotonic())
        await self.accept()
        admission().admitted(self)
        credential = signin.presented(self.scope, self.stream, self.ip)
        if credential is None:  # wait for a first `auth` message
            self.tasks.append(asyncio.ensure_future(self._auth_deadline()))
        elif isinstance(credential, protocol.Reason):
            await self.refuse(credential)
        else:
            await self.sign_in(credential)

    async def _auth_deadline(self):
        await asyncio.sleep(settings.WS_AUTH_TIMEOUT)
        if self.grant is None and not self.authenticating and not self.closing:
            await self.refuse(Refusal.AUTH_TIMEOUT)

    async def sign_in(self, credential):
        """One path for every credential: the grant it earns, then the seat.
        `authenticating` holds until start() is done, so the auth deadline
        cannot close the socket half-way through taking its leases."""
        self.authenticating = True
        try:
            mark = control().mark()
            outcome = await signin.grant(credential, self.stream, self.ip)
            if self.closing:
                return
            if outcome.refusal is not None:
                if outcome.claimed is not None:
                    self.claimed_token_id, self.claimed_prefix = outcome.claimed
                await self.refuse(outcome.refusal)
                return
            await self.start(outcome.grant, mark)
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
        admission().signed_in(ticket_of(self.scope))
        groups = groups_of(grant)
        topic = keys.stream_group(self.stream)
        state, fanout, ctl = get_state(), hub(), control()
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
            if not fanout.topics.get(topic) and await state.lease_count(keys.subscribers(self.stream)) == 1:
                await wake_feed()
            # Joined before the latest is read: nothing published meanwhile is lost.
            await asyncio.wait_for(fanout.join(self.subscriber, (topic,)), BACKEND_TIMEOUT)
            latest = await state.latest_get(self.stream)
            feed = await state.feed_get()
        except AccountsUnavailable:
            await (self._release() if self.closing else self.refuse(Refusal.ACCOUNTS_DOWN))
            return
        except BACKEND_ERRORS:
            await (self._release() if self.closing else self.refuse(Refusal.UNAVAILABLE))
            return
        except Exception:
            log.exception("connect failed stream=%s ip=%s", self.stream, self.ip)
            await (self._release() if self.closing else self.refuse(Refusal.UNAVAILABLE))
            return
        if self.closing:
            await self._release()
            return
        limits = {"max_connections": grant.token_max or grant.user_max}
        # Through daphne's own send: it completes the handshake's state.
        await self._say(protocol.welcome_frame(self.stream, heartbeat_s=settings.WS_HEARTBEAT_INTERVAL, limits=limits))
        if latest:
            await self.subscriber.write(latest)
        feed_text = protocol.feed_frame_if_newer(latest, feed)
        if feed_text:
            await self.subscriber.write(feed_text)
        await fanout.ready(self.subscriber, {topic: latest})
        if self.closing:
            await self._release()
            return
        await accounting().opened(self)
        if self.closing:
            return  # counted as opened, then closed by the cleanup that ran meanwhile
        sessions.registry().add(self)
        who = {"stream": self.stream, "user": grant.username, "token_prefix": grant.token_prefix or "session"}
        log.info(
            "connect stream=%s user=%s token_prefix=%s ip=%s", *who.values(), self.ip, extra={**who, "ip": self.ip}
        )

    async def _check_again(self):
        """The grant's re-check (the generation-checked token cache: one Redis
        read unless the token changed); the refusal it earns, or None."""
        result = await credentials.shared_check(self.grant, self.stream)
        refusal, _moved = credentials.apply_check(self.grant, result)
        return refusal

    async def _say(self, text):
        """A frame through the ASGI send (welcome, error, pong)."""
        try:
            await self.send(text_data=text)
        except Disconnected:
            # The client went away between our check and the write (daphne
            # marks it disconnected a moment later); its disconnect follows.
            self._closing()

    def _closing(self):
        self.closing = True
        self.subscriber.close()

    async def refuse(self, reason):
        """Send one `error` frame, close with the reason's code and give the slots back."""
        if self.closing:
            return
        self._closing()
        code = int(reason.close)
        self.close_code = code
        accounting().rejected(self, code)
        grant = self.grant
        prefix = (grant.token_prefix or "session") if grant else (self.claimed_prefix or "-")
        fields = {
            "stream": self.stream,
            "ip": self.ip,
            "code": code,
            "reason": reason.error,
            "user": grant.username if grant else "-",
            "token_prefix": prefix,
        }
        log.warning("refused stream=%s ip=%s code=%s reason=%s user=%s token_prefix=%s", *fields.values(), extra=fields)
        await self._say(protocol.error_frame(reason.error, reason.message, reason.retry_after))
        await links.close(self.base_send, self.subscriber.link, code)
        await self.cleanup()

    async def backend_lost(self):
        """Redis stopped answering (the watchdog)."""
        await self.refuse(Refusal.BACKEND_LOST)

    def too_slow(self, why):
        """The client stopped reading (delivery says so once)."""
        if not self.closing:
            self.tasks.append(asyncio.ensure_future(self._too_slow(why)))

    async def _too_slow(self, why):
        log.warning("closing slow client stream=%s ip=%s why=%s", self.stream, self.ip, why)
        await self.refuse(Refusal.TOO_SLOW)
        link = self.subscriber.link
        if link is not None:
            # The close frame cannot get through a full pipe: drop the TCP
            # connection after a moment so its buffers are freed.
            asyncio.get_running_loop().call_later(1.0, link.abort)

    async def shutdown(self):
        """Server going away: 4200 ("reconnect now"), slots given back."""
        if not self.closing:
            self._closing()
            self.close_code = int(Close.RESTARTING)
            try:
                await self._say(protocol.error_frame(Refusal.RESTARTING.error, Refusal.RESTARTING.message))
                await self.close(code=int(Close.RESTARTING))
            except Exception:  # the transport may already be gone
                log.debug("close on shutdown failed", exc_info=True)
        await self.cleanup()
        await asyncio.sleep(0.05)  # let the reactor flush the close frame

    async def cleanup(self, code=None):
        """Everything the socket holds, given back (safe to repeat)."""
        if self.cleaned or not hasattr(self, "conn_id"):
            return
        self.cleaned = True
        accounting().closed(self, code)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        admission().sockets.discard(self)
        admission().signed_in(ticket_of(self.scope))
        hub().leave(self.subscriber)
        sessions.registry().remove(self)
        await self._release()

    async def _release(self):
        """Give the leases back and drop the live-session entry first (another
        socket may be waiting for the slot), then leave the control groups
        (local; an unused subscription is dropped in the background). Best
        effort (what Redis does not take back expires on its own) and safe to
        repeat."""
        hub().leave(self.subscriber)
        if self.lease_keys:
            await leases.release(self.conn_id, self.lease_keys)
            await sessions.drop(self.conn_id)
        control().leave(self)

    async def disconnect(self, code):
        await self.cleanup(code)
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

    # --- control messages (from `control`) -------------------------------------------

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
            log.exception("re-check failed stream=%s ip=%s", self.stream, self.ip)

    async def session_end(self, message):
        """The browser session this socket signed in with was logged out or deleted."""
        await self.refuse(Refusal.SIGNED_OUT)

    async def session_close(self, message):
        """Staff disconnected this socket from the admin."""
        log.warning("kicked stream=%s ip=%s by=%s", self.stream, self.ip, message.get("by", "?"))
        code = int(message.get("code", Close.KICKED))
        await self.refuse(Refusal.KICKED._replace(close=code))

    # --- the client's messages ----------------------------------------------------

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
            await self._say(protocol.error_frame(exc.code, exc.message))

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
        if not isinstance(kind, str):
            kind = None
        if kind != "auth" and self.grant is None:
            await self.refuse(Refusal.AUTH_REQUIRED)
            return
        handler = CLIENT_MESSAGES.get(kind)
        if handler is None:
            raise ClientError("unknown_type", "unknown message type")
        await getattr(self, handler)(message)

    async def client_auth(self, message):
        if self.grant is not None or self.authenticating:
            raise ClientError("already_authenticated", "this socket is already authenticated")
        raw = message.get("token")
        await self.sign_in(signin.Token(raw if isinstance(raw, str) else ""))

    async def client_ping(self, message):
        await self._say(protocol.pong_frame())

    async def client_pong(self, message):
        pass  # an answer to a `heartbeat`: optional, nothing to do

    async def client_resync(self, message):
        """The latest snapshot again, from this process's hub: written as a
        fan-out would (a client that does not read is conflated and closed
        4103), no Redis read per request."""
        if await hub().resend(self.subscriber, keys.stream_group(self.stream)):
            return
        # Nothing published since this process joined the stream: ask Redis, at most once a second.
        now = time.monotonic()
        if now - self.resync_read_at < RESYNC_READ_EVERY:
            return
        self.resync_read_at = now
        try:
            latest = await get_state().latest_get(self.stream)
        except StateUnavailable:
            raise ClientError("unavailable", "snapshot store unavailable; retry later") from None
        if latest:
            hub().remember(keys.stream_group(self.stream), latest)
            await hub().resend(self.subscriber, keys.stream_group(self.stream))


# A client message's `type` -> its handler.
CLIENT_MESSAGES = {"auth": "client_auth", "ping": "client_ping", "pong": "client_pong", "resync": "client_resync"}
