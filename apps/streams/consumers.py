"""One base consumer for the three streams; the subclasses only name their stream.

Lifecycle: accept, authenticate (session, Bearer header, first `auth` message
or `?token=`), take connection leases, join the stream group, send `welcome`
and the latest snapshot, then forward every published frame unchanged.
Failures send one `error` frame and close with a code from `protocol.Close`.

While open, a heartbeat task sends `heartbeat` frames and protocol pings,
renews the leases and the live-session entry; a re-check task re-validates
the token (and the caps) every TOKEN_RECHECK_INTERVAL and at its expiry.
"""

import asyncio
import functools
import json
import logging
import os
import random
import secrets
import socket
import time
import uuid
from urllib.parse import parse_qs

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.utils import await_many_dispatch
from django.conf import settings
from redis.exceptions import RedisError

from apps.accounts.auth import AccountsUnavailable, check_token, recheck_token, session_user_check

from . import authlimit, protocol
from .accounting import accounting
from .metrics import fanout
from .netaddr import scope_client_ip
from .protocol import Close
from .publish import wake_feed
from .state import StateUnavailable, get_state
from .transport import link_for
from .watchdog import draining, install_sigterm_drain, watchdog

log = logging.getLogger("apps.streams")

# How long a connect may wait on Redis (channel subscription) before 1013.
BACKEND_TIMEOUT = 3.0
# First retry of a failed token re-check (doubles up to TOKEN_RECHECK_INTERVAL).
RECHECK_RETRY = 1.0
PROCESS = f"{socket.gethostname()}:{os.getpid()}"

_REJECTION_CLOSE = {
    "bad": (Close.BAD_CREDENTIALS, "auth_failed", "token not recognised"),
    "revoked": (Close.REVOKED, "token_revoked", "token revoked"),
    "retired": (Close.REVOKED, "token_retired", "token replaced and its rotation grace has ended"),
    "expired": (Close.EXPIRED, "token_expired", "token expired"),
    "stream": (Close.FORBIDDEN, "stream_forbidden", "stream not allowed for this token"),
    "limited": (Close.ABUSE, "too_many_failures", "too many failed sign-ins from this address; retry later"),
}
_SESSION_ENDED = (Close.REVOKED, "session_revoked", "this account was deactivated or removed")
_BACKEND_ERRORS = (StateUnavailable, RedisError, OSError, asyncio.TimeoutError)
# The accounts database cannot answer: "retry later", with a reason, never 1011.
_ACCOUNTS_DOWN = (Close.TRY_AGAIN_LATER, "unavailable", "sign-in is temporarily unavailable; retry later")


class ClientError(Exception):
    """Bad client input: answered with an `error` frame; the socket stays open."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Grant:
    """Who is connected and what they may use: a session user or an API token.
    `deadline`: when the token stops working on its own (expiry or end of
    rotation grace), as epoch seconds, or None."""

    def __init__(
        self, *, user_id, username, token_id=None, token_prefix=None, token_max=None, user_max=None, deadline=None
    ):
        self.user_id = user_id
        self.username = username
        self.token_id = token_id
        self.token_prefix = token_prefix
        self.token_max = token_max
        self.user_max = user_max
        self.deadline = deadline


def _deadline_of(check):
    moments = [moment.timestamp() for moment in (check.expires_at, check.retires_at) if moment is not None]
    return min(moments) if moments else None


async def _token_grant(raw, stream, ip):
    """(Grant, None), or (None, (reason, the failed check)) when refused.
    An address over its failed sign-in budget gets only what the token cache
    can answer; anything needing the database is refused ('limited')."""
    limited = await authlimit.over_budget(ip)
    check = await check_token(raw, stream, ip, load=not limited)
    if check is None:
        return None, ("limited", None)
    if check.reason == "bad":
        await authlimit.failed(ip)
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
            deadline=_deadline_of(check),
        ),
        None,
    )


async def _session_grant(user):
    """A Grant for the session's user (already loaded by the auth middleware;
    one query for the cap), or None if the user is gone or inactive by now."""
    active, user_max = await session_user_check(user.id)
    if not active:
        return None
    return Grant(user_id=user.id, username=user.get_username(), user_max=user_max)


def _header(scope, wanted):
    for name, value in scope.get("headers", []):
        if name == wanted:
            return value.decode("latin-1")
    return None


def origin_allowed(origin):
    """Browser origins allowed to use a session (exact scheme://host[:port])."""
    if not origin:
        return False
    allowed = {entry.rstrip("/").lower() for entry in settings.WS_ALLOWED_ORIGINS}
    return origin.rstrip("/").lower() in allowed


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


class StreamConsumer(AsyncWebsocketConsumer):
    stream = None  # set by subclasses

    # --- ASGI entry ---------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        """Channels' own loop, plus: a bounded wait on the channel layer (Redis
        down means a quick 1013, never a hang), and a 4200 close when daphne
        cancels us on shutdown."""
        self.scope = scope
        self.base_send = send
        self.closing = False
        self.cleaned = False
        self.lease_keys = []
        self.groups_joined = []
        self.tasks = []
        self.channel_layer = self.get_layer()
        try:
            if not watchdog().healthy:
                raise StateUnavailable("redis is down")
            self.channel_name = await asyncio.wait_for(self.channel_layer.new_channel(), BACKEND_TIMEOUT)
        except _BACKEND_ERRORS as exc:
            log.warning("refused path=%s code=1013 reason=channel layer unavailable (%s)", scope.get("path"), exc)
            await self._refuse_before_start(receive)
            return
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        try:
            await await_many_dispatch([receive, self.channel_receive], self.dispatch)
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            # Daphne cancels every application on SIGTERM: say "reconnect now"
            # and give the slots back before the process goes.
            await self.shutdown()
            raise
        except _BACKEND_ERRORS as exc:  # the layer lost Redis under us
            log.warning("channel layer failed stream=%s: %s", self.stream, exc)
            await self.refuse(Close.TRY_AGAIN_LATER, "unavailable", "service temporarily unavailable")
        finally:
            await self._cleanup()

    def get_layer(self):
        from channels.layers import get_channel_layer

        return get_channel_layer(self.channel_layer_alias)

    async def _refuse_before_start(self, receive):
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        from .metrics import REJECTIONS

        REJECTIONS.labels(self.stream, str(int(Close.TRY_AGAIN_LATER))).inc()
        await self.base_send({"type": "websocket.accept"})
        await self.base_send(
            {"type": "websocket.send", "text": protocol.error_frame("unavailable", "service temporarily unavailable")}
        )
        await _asgi_close(self.base_send, link_for(self.scope), int(Close.TRY_AGAIN_LATER))

    async def send(self, text_data=None, bytes_data=None, close=False):
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except Disconnected:
            # The client went away between our check and the write (daphne
            # marks it disconnected a moment later); its disconnect follows.
            self.closing = True

    async def close(self, code=None, reason=None):
        await _asgi_close(self.base_send, getattr(self, "link", None), code)

    async def dispatch(self, message):
        # Broadcast frames never touch the ORM: skip Channels' per-message
        # aclose_old_connections() thread hop (half the CPU at fan-out).
        if message["type"] == "stream.frame":
            await self.stream_frame(message)
            return
        if getattr(self, get_handler_name(message), None) is None:
            log.debug("ignored channel message type=%s", message.get("type"))
            return
        await super().dispatch(message)

    # --- lifecycle ---------------------------------------------------------------

    async def connect(self):
        self.conn_id = new_connection_id()
        self.grant = None
        self.authenticating = False  # from credentials to the end of start()
        self.deadline_moved = asyncio.Event()  # set when a re-check moves the token's deadline
        self.ip = scope_client_ip(self.scope)
        self.origin = _header(self.scope, b"origin")
        self.link = link_for(self.scope)
        self.since_ms = protocol.now_ms()
        self.opened = time.monotonic()
        self.sent = 0
        self.sent_bytes = 0
        self.close_code = None
        self.claimed_token_id = None  # a known token that was refused (usage rejections)
        self.claimed_prefix = None
        self.pending = {}  # kind -> newest frame held back from a client that is not reading
        self.backlogged_since = None
        self.ping_nonce = None
        self.bucket = (float(settings.WS_INBOUND_BURST), time.monotonic())
        await self.accept()
        if draining():
            await self.refuse(Close.RESTARTING, "restarting", "server restarting; reconnect")
            return
        watchdog().consumers.add(self)
        if self.link is not None:
            install_sigterm_drain()

        raw = self._header_token() or self._query_token()
        user = self.scope.get("user")
        if raw is None and user is not None and user.is_authenticated:
            # A cookie is an ambient credential: only pages we serve may use it.
            if not origin_allowed(self.origin):
                log.warning(
                    "refused cross-origin session stream=%s ip=%s origin=%r user=%s",
                    self.stream,
                    self.ip,
                    self.origin,
                    user.get_username(),
                )
                await self.refuse(Close.FORBIDDEN, "origin_forbidden", "origin not allowed for session sign-in")
                return
            self.authenticating = True  # until start() is done: no deadline, no second `auth`
            try:
                try:
                    grant = await _session_grant(user)
                except AccountsUnavailable:
                    await self.refuse(*_ACCOUNTS_DOWN)
                    return
                if self.closing:
                    return
                if grant is None:
                    await self.refuse(Close.BAD_CREDENTIALS, "auth_failed", "session user is inactive or removed")
                    return
                await self.start(grant)
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
            await self.refuse(Close.BAD_CREDENTIALS, "auth_timeout", "no credentials in time")

    def _header_token(self):
        value = _header(self.scope, b"authorization")
        if value:
            scheme, _, credential = value.partition(" ")
            if scheme.lower() == "bearer":
                return credential.strip()
        return None

    def _query_token(self):
        values = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("token")
        return values[0] if values else None

    async def authenticate(self, raw):
        # `authenticating` holds until start() is done, so the auth deadline
        # cannot close the socket half-way through taking its leases.
        self.authenticating = True
        try:
            try:
                grant, reason = await _token_grant(raw, self.stream, self.ip)
            except AccountsUnavailable:
                await self.refuse(*_ACCOUNTS_DOWN)
                return
            if self.closing:
                return
            if grant is None:
                reason, check = reason
                if check is not None and reason != "bad":
                    self.claimed_token_id, self.claimed_prefix = check.token_id, check.token_prefix
                code, error, message = _REJECTION_CLOSE[reason]
                await self.refuse(code, error, message)
                return
            await self.start(grant)
        finally:
            self.authenticating = False

    def _limits(self, grant):
        limits = [
            (f"ip:{self.ip}", settings.WS_MAX_CONNECTIONS_PER_IP),
            (protocol.subscriber_key(self.stream), None),
        ]
        if grant.token_id is not None:
            limits.append((f"token:{grant.token_id}", grant.token_max))
        limits.append((f"user:{grant.user_id}", grant.user_max))
        return limits

    async def start(self, grant):
        """Take the leases, join the groups, register the live session, send
        `welcome` and the latest snapshot, then start the heartbeat and the
        re-check. A concurrent task (watchdog, SIGTERM drain, auth deadline,
        a kick) may close the socket at any await in here; whatever was taken
        after its cleanup ran is given back before returning."""
        state = get_state()
        limits = self._limits(grant)
        try:
            failed = await state.lease_acquire(self.conn_id, limits, settings.WS_LEASE_TTL)
        except StateUnavailable:
            await self.refuse(Close.TRY_AGAIN_LATER, "unavailable", "service temporarily unavailable")
            return
        if failed:
            key = limits[failed - 1][0].split(":", 1)[0]
            self.claimed_token_id, self.claimed_prefix = grant.token_id, grant.token_prefix
            await self.refuse(Close.OVER_LIMIT, "over_limit", f"too many connections for this {key}")
            return
        self.lease_keys = [key for key, _ in limits]
        if self.closing:
            await self._release()
            return
        self.grant = grant
        groups = [protocol.stream_group(self.stream), protocol.user_group(grant.user_id)]
        if grant.token_id is not None:
            groups.append(protocol.token_group(grant.token_id))
        try:
            for group in groups:
                self.groups_joined.append(group)  # first: a join that times out may still happen
                await asyncio.wait_for(self.channel_layer.group_add(group, self.channel_name), BACKEND_TIMEOUT)
            await self._register_session(state)
            if await state.lease_count(protocol.subscriber_key(self.stream)) == 1:
                await wake_feed()  # the worker idles while no stream has subscribers
            latest = await state.latest_get(self.stream)
            feed = await state.feed_get()
        except _BACKEND_ERRORS:
            if self.closing:  # closed meanwhile: refuse() would do nothing
                await self._release()
            else:
                await self.refuse(Close.TRY_AGAIN_LATER, "unavailable", "service temporarily unavailable")
            return
        if self.closing:
            await self._release()
            return
        await self.send(
            text_data=protocol.welcome_frame(
                self.stream,
                heartbeat_s=settings.WS_HEARTBEAT_INTERVAL,
                limits={"max_connections": grant.token_max or grant.user_max},
            )
        )
        if latest and self._is_newer(protocol.snapshot_position(latest)):
            await self._send_frame(latest)
        feed_text = self._feed_frame_if_newer(latest, feed)
        if feed_text:
            await self._send_frame(feed_text)
        if self.closing:
            await self._release()
            return
        await accounting().opened(self)
        if self.closing:
            return  # counted as opened, then closed by the cleanup that ran meanwhile
        who = {"stream": self.stream, "user": grant.username, "token_prefix": grant.token_prefix or "session"}
        log.info(
            "connect stream=%s user=%s token_prefix=%s ip=%s",
            *who.values(),
            self.ip,
            extra={**who, "ip": self.ip},
        )
        self.tasks.append(asyncio.ensure_future(self._heartbeat()))
        self.tasks.append(asyncio.ensure_future(self._recheck_loop()))

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

    async def _register_session(self, state):
        info = {
            "id": self.conn_id,
            "channel": self.channel_name,
            "user": self.grant.username,
            "user_id": self.grant.user_id,
            "token_prefix": self.grant.token_prefix or "",
            "stream": self.stream,
            "ip": self.ip,
            "since_ms": self.since_ms,
            "sent": self.sent,
            "process": PROCESS,
        }
        await state.session_put(self.conn_id, info, settings.WS_LEASE_TTL)

    async def refuse(self, code, error, message):
        """Send one `error` frame, close with `code` and give the slots back."""
        if self.closing:
            return
        self.closing = True
        self.close_code = int(code)
        accounting().rejected(self, code)
        grant = getattr(self, "grant", None)
        prefix = (grant.token_prefix or "session") if grant else (getattr(self, "claimed_prefix", None) or "-")
        fields = {
            "stream": self.stream,
            "ip": getattr(self, "ip", "?"),
            "code": int(code),
            "reason": error,
            "user": grant.username if grant else "-",
            "token_prefix": prefix,
        }
        log.warning("refused stream=%s ip=%s code=%s reason=%s user=%s token_prefix=%s", *fields.values(), extra=fields)
        await self.send(text_data=protocol.error_frame(error, message))
        await self.close(code=int(code))
        await self._cleanup()

    async def backend_lost(self):
        """Called by the watchdog when Redis stops answering."""
        await self.refuse(Close.TRY_AGAIN_LATER, "unavailable", "a backing service is unavailable; retry later")

    async def shutdown(self):
        """Server going away: 4200 ("reconnect now"), slots given back."""
        if not self.closing:
            self.closing = True
            self.close_code = int(Close.RESTARTING)
            try:
                await self.send(text_data=protocol.error_frame("restarting", "server restarting; reconnect"))
                await self.close(code=int(Close.RESTARTING))
            except Exception:  # the transport may already be gone
                log.debug("close on shutdown failed", exc_info=True)
        await self._cleanup()
        await asyncio.sleep(0.05)  # let the reactor flush the close frame

    async def _cleanup(self, code=None):
        if self.cleaned:
            return
        self.cleaned = True
        accounting().closed(self, code)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        watchdog().consumers.discard(self)
        await self._release()

    async def _release(self):
        """Leave the groups, give the leases back, drop the live-session entry.
        Best effort (what Redis does not take back expires on its own) and
        safe to repeat."""
        for group in self.groups_joined:
            try:
                await asyncio.wait_for(self.channel_layer.group_discard(group, self.channel_name), 1)
            except Exception:  # best effort while Redis may be gone
                log.debug("group_discard failed", exc_info=True)
        if self.lease_keys:
            state = get_state()
            try:
                await asyncio.wait_for(state.lease_release(self.conn_id, self.lease_keys), 1)
                await asyncio.wait_for(state.session_drop(self.conn_id), 1)
            except _BACKEND_ERRORS:
                pass  # the leases and the session entry expire on their own

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

    # --- heartbeat, liveness, slow clients ------------------------------------

    async def _heartbeat(self):
        """The socket's safety loop: one failing beat is logged and the next
        one comes; only a close ends it."""
        # The first beat at a random point of the interval: sockets opened
        # together (a reconnect storm) must not renew their leases together.
        delay = random.uniform(0.5, 1.0) * settings.WS_HEARTBEAT_INTERVAL
        while not self.closing:
            await asyncio.sleep(delay)
            delay = settings.WS_HEARTBEAT_INTERVAL
            if self.closing:
                return
            try:
                await self._beat()
            except Exception:
                log.exception("heartbeat failed stream=%s ip=%s", self.stream, self.ip)

    async def _beat(self):
        if self._backlogged():
            if time.monotonic() - self.backlogged_since > settings.WS_HEARTBEAT_TIMEOUT:
                await self._too_slow("not reading")
                return
        else:
            await self.send(text_data=protocol.heartbeat_frame())
        self._ping()
        state = get_state()
        try:
            # Renewal goes through the acquire script: a lease lost (Redis
            # restarted, a long stall) is taken again if there is room.
            failed = await state.lease_acquire(self.conn_id, self._limits(self.grant), settings.WS_LEASE_TTL)
            await self._register_session(state)
        except StateUnavailable:
            await self.backend_lost()
            return
        if failed:
            await self.refuse(Close.OVER_LIMIT, "over_limit", "connection limit lowered")

    def _ping(self):
        """A protocol ping the client's library answers on its own; no pong
        within WS_HEARTBEAT_TIMEOUT means it stopped reading or its link died."""
        if self.link is None or self.ping_nonce is not None:
            return
        nonce = secrets.token_bytes(8)
        self.ping_nonce = nonce
        self.link.ping(nonce, self._on_pong)
        asyncio.get_running_loop().call_later(settings.WS_HEARTBEAT_TIMEOUT, self._pong_overdue, nonce)

    def _on_pong(self, payload):
        if payload == self.ping_nonce:
            self.ping_nonce = None

    def _pong_overdue(self, nonce):
        if self.ping_nonce == nonce and not self.closing:
            self.tasks.append(asyncio.ensure_future(self._too_slow("no pong")))

    async def _too_slow(self, why):
        log.warning("closing slow client stream=%s ip=%s why=%s", self.stream, self.ip, why)
        await self.refuse(Close.TOO_SLOW, "too_slow", "the client stopped reading")
        if self.link is not None:
            # The close frame cannot get through a full pipe: drop the TCP
            # connection after a moment so its buffers are freed.
            asyncio.get_running_loop().call_later(1.0, self.link.abort)

    def _backlogged(self):
        """True while more than WS_SEND_BUFFER_BYTES wait for this client."""
        if self.link is None or self.link.backlog() <= settings.WS_SEND_BUFFER_BYTES:
            self.backlogged_since = None
            return False
        if self.backlogged_since is None:
            self.backlogged_since = time.monotonic()
        return True

    async def _send_frame(self, text, kind="snapshot", size=None):
        """Forward a pre-serialized frame; a client that is not reading gets
        only the newest frame of each kind once it catches up (conflation).
        Returns True if `text` was written now, False if it was held back."""
        if self._backlogged():
            self.pending[kind] = text
            if time.monotonic() - self.backlogged_since > settings.WS_HEARTBEAT_TIMEOUT:
                await self._too_slow("send buffer full")
            return False
        if self.pending:
            held, self.pending = self.pending, {}
            for held_kind, held_text in held.items():
                if held_kind != kind:
                    await self.send(text_data=held_text)
                    self.sent += 1
                    self.sent_bytes += len(held_text)
        await self.send(text_data=text)
        self.sent += 1
        # `size` (UTF-8 bytes) comes with published frames; len() is exact for ASCII frames.
        self.sent_bytes += len(text) if size is None else size
        return True

    # --- live token effects --------------------------------------------------------

    async def _recheck_loop(self):
        """Re-check every TOKEN_RECHECK_INTERVAL, and at the token's deadline;
        a re-check that moves the deadline wakes the loop to reschedule.
        A failing re-check (database down) is logged and retried with backoff;
        it never ends the loop."""
        retry = None  # seconds until the retry of a failed re-check
        while not self.closing:
            wait = settings.TOKEN_RECHECK_INTERVAL
            if self.grant.deadline is not None:
                wait = max(0.0, min(wait, self.grant.deadline - time.time() + 0.05))
            if retry is not None:
                wait = max(wait, retry)  # a passed deadline must not turn failures into a busy loop
            self.deadline_moved.clear()
            try:
                await asyncio.wait_for(self.deadline_moved.wait(), wait)
                continue
            except TimeoutError:
                pass
            if self.closing:
                return
            try:
                await self.recheck()
            except AccountsUnavailable:
                retry = min(settings.TOKEN_RECHECK_INTERVAL, 2 * retry if retry else RECHECK_RETRY)
                log.warning("re-check unavailable stream=%s ip=%s; retrying in %.0f s", self.stream, self.ip, retry)
            except Exception:
                retry = min(settings.TOKEN_RECHECK_INTERVAL, 2 * retry if retry else RECHECK_RETRY)
                log.exception("re-check failed stream=%s ip=%s; retrying in %.0f s", self.stream, self.ip, retry)
            else:
                retry = None

    async def recheck(self):
        """Re-validate the token and the caps now; close if they no longer hold."""
        if self.grant is None or self.closing:
            return
        grant = self.grant
        if grant.token_id is not None:
            check = await recheck_token(grant.token_id, self.stream)
            if not check.ok:
                code, error, message = _REJECTION_CLOSE[check.reason if check.reason != "bad" else "revoked"]
                await self.refuse(code, error, message)
                return
            grant.token_max = check.token_max_connections
            grant.user_max = check.user_max_connections
            deadline = _deadline_of(check)
            if deadline != grant.deadline:
                grant.deadline = deadline
                self.deadline_moved.set()
        else:
            active, user_max = await session_user_check(grant.user_id)
            if self.closing:
                return
            if not active:
                await self.refuse(*_SESSION_ENDED)
                return
            grant.user_max = user_max
        await self._enforce_caps()

    async def _enforce_caps(self):
        """Lowered caps close the newest sockets first: every socket of the
        token (user) ranks itself among the live leases, which sort by
        connect time, so all processes agree without talking to each other."""
        caps = [(f"user:{self.grant.user_id}", self.grant.user_max)]
        if self.grant.token_id is not None:
            caps.insert(0, (f"token:{self.grant.token_id}", self.grant.token_max))
        state = get_state()
        for key, cap in caps:
            if cap is None:
                continue
            try:
                # Counting is cheap; the members are fetched only when over the cap.
                if await state.lease_count(key) <= cap:
                    continue
                members = await state.lease_members(key)
            except StateUnavailable:
                return
            if self.conn_id in members and members.index(self.conn_id) >= cap:
                kind = key.split(":")[0]
                await self.refuse(Close.OVER_LIMIT, "over_limit", f"connection limit for this {kind} lowered")
                return

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

    async def session_close(self, message):
        """Staff disconnected this socket from the admin."""
        log.warning("kicked stream=%s ip=%s by=%s", self.stream, getattr(self, "ip", "?"), message.get("by", "?"))
        await self.refuse(int(message.get("code", Close.KICKED)), "disconnected", "disconnected by an operator")

    # --- client messages ----------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if self.closing:
            return
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_INBOUND_BYTES:
            limit = settings.WS_MAX_INBOUND_BYTES
            await self.refuse(Close.ABUSE, "too_large", f"messages are limited to {limit} bytes")
            return
        if not self._take_token():
            await self.refuse(Close.ABUSE, "flooding", "too many messages")
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
            await self.refuse(Close.BAD_CREDENTIALS, "auth_required", "authenticate first")
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
                await self._send_frame(latest)
        else:
            raise ClientError("unknown_type", "unknown message type")

    # --- channel-layer messages ------------------------------------------------

    def _is_newer(self, position):
        """True for a snapshot newer than the last one forwarded (or any other
        frame): a paused leader's late frame, or one already sent as `latest`
        on connect, never reaches the client after a newer one."""
        if position is None or position[1] is None:
            return True
        last = getattr(self, "last_position", None)
        if last is not None and last[0] == position[0] and position[1] <= last[1]:
            return False
        self.last_position = position
        return True

    async def stream_frame(self, message):
        if self.grant is not None and not self.closing:
            if message.get("seq") is not None and not self._is_newer((message.get("epoch"), message["seq"])):
                return
            written = await self._send_frame(message["text"], message.get("kind", "snapshot"), message.get("bytes"))
            published_ms = message.get("published_ms")
            if written and published_ms:
                fanout.sent(self.stream, published_ms)


class MarketConsumer(StreamConsumer):
    stream = "market"


class ForeignConsumer(StreamConsumer):
    stream = "foreign"


class IndexConsumer(StreamConsumer):
    stream = "index"
