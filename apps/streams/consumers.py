"""One base consumer for the three streams; the subclasses only name their stream.

Lifecycle: accept, authenticate (session, Bearer header, first `auth` message
or `?token=`), take connection leases, join the stream group, send `welcome`
and the latest snapshot, then forward every published frame unchanged.
Failures send one `error` frame and close with a code from `protocol.Close`.
"""

import asyncio
import json
import logging
import time
import uuid
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from apps.accounts.auth import check_token, user_max_connections

from . import protocol
from .protocol import Close
from .state import StateUnavailable, get_state

log = logging.getLogger("apps.streams")

_REJECTION_CLOSE = {
    "bad": (Close.BAD_CREDENTIALS, "auth_failed", "token not recognised"),
    "revoked": (Close.REVOKED, "token_revoked", "token revoked"),
    "retired": (Close.REVOKED, "token_retired", "token replaced and its rotation grace has ended"),
    "expired": (Close.EXPIRED, "token_expired", "token expired"),
    "stream": (Close.FORBIDDEN, "stream_forbidden", "stream not allowed for this token"),
}


class ClientError(Exception):
    """Bad client input: answered with an `error` frame; the socket stays open."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Grant:
    """Who is connected and what they may use: a session user or an API token."""

    def __init__(self, *, user_id, username, token_id=None, token_prefix=None, token_max=None, user_max=None):
        self.user_id = user_id
        self.username = username
        self.token_id = token_id
        self.token_prefix = token_prefix
        self.token_max = token_max
        self.user_max = user_max


async def _token_grant(raw, stream, ip):
    check = await check_token(raw, stream, ip)
    if not check.ok:
        return None, check.reason
    return (
        Grant(
            user_id=check.user_id,
            username=check.username,
            token_id=check.token_id,
            token_prefix=check.token_prefix,
            token_max=check.token_max_connections,
            user_max=check.user_max_connections,
        ),
        None,
    )


async def _session_grant(user):
    return Grant(user_id=user.id, username=user.get_username(), user_max=await user_max_connections(user.id))


def client_ip(scope):
    """The peer address, or the X-Forwarded-For client when the peer is a trusted proxy."""
    peer = (scope.get("client") or ["unknown"])[0]
    if peer in settings.WS_TRUSTED_PROXIES:
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                # The proxy appends the address it saw: the rightmost entry is
                # the one it vouches for; anything left of it the client wrote.
                return value.decode("latin-1").split(",")[-1].strip() or peer
    return peer


class StreamConsumer(AsyncWebsocketConsumer):
    stream = None  # set by subclasses

    # --- lifecycle ---------------------------------------------------------------

    async def connect(self):
        self.conn_id = uuid.uuid4().hex
        self.grant = None
        self.lease_keys = []
        self.groups_joined = []
        self.ip = client_ip(self.scope)
        self.opened = time.monotonic()
        self.sent = 0
        self.tasks = []
        self.bucket = (float(settings.WS_INBOUND_BURST), time.monotonic())
        await self.accept()

        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            await self.start(await _session_grant(user))
            return
        raw = self._header_token() or self._query_token()
        if raw is not None:
            await self.authenticate(raw)
            return
        # Otherwise wait for a first `auth` message.
        self.tasks.append(asyncio.ensure_future(self._auth_deadline()))

    async def _auth_deadline(self):
        await asyncio.sleep(settings.WS_AUTH_TIMEOUT)
        if self.grant is None:
            await self.refuse(Close.BAD_CREDENTIALS, "auth_timeout", "no credentials in time")

    def _header_token(self):
        for name, value in self.scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return credential.strip()
        return None

    def _query_token(self):
        values = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("token")
        return values[0] if values else None

    async def authenticate(self, raw):
        grant, reason = await _token_grant(raw, self.stream, self.ip)
        if grant is None:
            code, error, message = _REJECTION_CLOSE[reason]
            await self.refuse(code, error, message)
            return
        await self.start(grant)

    async def start(self, grant):
        limits = [(f"ip:{self.ip}", settings.WS_MAX_CONNECTIONS_PER_IP), (f"stream:{self.stream}", None)]
        if grant.token_id is not None:
            limits.append((f"token:{grant.token_id}", grant.token_max))
        limits.append((f"user:{grant.user_id}", grant.user_max))
        state = get_state()
        try:
            failed = await state.lease_acquire(self.conn_id, limits, settings.WS_LEASE_TTL)
        except StateUnavailable:
            await self.refuse(Close.TRY_AGAIN_LATER, "unavailable", "service temporarily unavailable")
            return
        if failed:
            key = limits[failed - 1][0].split(":", 1)[0]
            await self.refuse(Close.OVER_LIMIT, "over_limit", f"too many connections for this {key}")
            return
        self.grant = grant
        self.lease_keys = [key for key, _ in limits]
        groups = [protocol.stream_group(self.stream)]
        if grant.token_id is not None:
            groups.append(protocol.token_group(grant.token_id))
        groups.append(protocol.user_group(grant.user_id))
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
        await self.send(
            text_data=protocol.welcome_frame(
                self.stream,
                heartbeat_s=settings.WS_HEARTBEAT_INTERVAL,
                limits={"max_connections": grant.token_max or grant.user_max},
            )
        )
        latest = await state.latest_get(self.stream)
        if latest:
            await self.send(text_data=latest)
            self.sent += 1
        log.info(
            "connect stream=%s user=%s token=%s ip=%s",
            self.stream,
            grant.username,
            grant.token_prefix or "session",
            self.ip,
        )
        self.tasks.append(asyncio.ensure_future(self._heartbeat()))

    async def refuse(self, code, error, message):
        log.warning("refused stream=%s ip=%s code=%s reason=%s", self.stream, self.ip, int(code), error)
        await self.send(text_data=protocol.error_frame(error, message))
        await self.close(code=int(code))

    async def _heartbeat(self):
        state = get_state()
        while True:
            await asyncio.sleep(settings.WS_HEARTBEAT_INTERVAL)
            await self.send(text_data=protocol.heartbeat_frame())
            try:
                await state.lease_renew(self.conn_id, self.lease_keys, settings.WS_LEASE_TTL)
            except StateUnavailable:
                log.warning("lease renewal failed stream=%s", self.stream)

    async def disconnect(self, code):
        for task in self.tasks:
            task.cancel()
        for group in self.groups_joined:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:  # noqa: BLE001 - best effort while Redis may be gone
                log.debug("group_discard failed", exc_info=True)
        if self.lease_keys:
            try:
                await get_state().lease_release(self.conn_id, self.lease_keys)
            except StateUnavailable:
                pass  # the leases expire on their own
        if self.grant is not None:
            log.info(
                "disconnect stream=%s user=%s token=%s ip=%s duration_s=%.1f code=%s",
                self.stream,
                self.grant.username,
                self.grant.token_prefix or "session",
                self.ip,
                time.monotonic() - self.opened,
                code,
            )

    # --- client messages ----------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_INBOUND_BYTES:
            await self.refuse(Close.ABUSE, "too_large", f"messages are limited to {settings.WS_MAX_INBOUND_BYTES} bytes")
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
        except ValueError:
            raise ClientError("bad_message", "not JSON") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "auth":
            if self.grant is not None:
                raise ClientError("already_authenticated", "this socket is already authenticated")
            raw = message.get("token")
            await self.authenticate(raw if isinstance(raw, str) else "")
        elif self.grant is None:
            await self.refuse(Close.BAD_CREDENTIALS, "auth_required", "authenticate first")
        elif kind == "ping":
            await self.send(text_data=protocol.dumps({"type": "pong", "server_time_ms": protocol.now_ms()}))
        elif kind == "pong":
            pass
        elif kind == "resync":
            latest = await get_state().latest_get(self.stream)
            if latest:
                await self.send(text_data=latest)
        else:
            raise ClientError("unknown_type", "unknown message type")

    # --- channel-layer messages ------------------------------------------------

    async def stream_frame(self, message):
        if self.grant is not None:
            await self.send(text_data=message["text"])
            self.sent += 1


class MarketConsumer(StreamConsumer):
    stream = "market"


class ForeignConsumer(StreamConsumer):
    stream = "foreign"


class IndexConsumer(StreamConsumer):
    stream = "index"
