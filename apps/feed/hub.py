"""SSI FastConnect Data streaming hub: an async classic ASP.NET SignalR client.

Hub `FcMarketDataV2Hub` at SSI_STREAM_URL + `v2.0/signalr/`. Per connection:
negotiate (GET, bearer token; a 1.5 or 1.3 answer is fine), open the WebSocket
`connect` URL with the connection token URL-escaped (it holds `+` and `/`),
`start` when the server offers it (failure is logged, not fatal), then
`SwitchChannels(<TYPE>:<A-B-C>)`. Frames: `{}` keep-alives, `{"C":..,"M":[..]}`
with any number of `Broadcast`/`Error` calls, `{"I":..}` invocation results.

`HubChannel` keeps one such connection alive for one channel type: silence
past KeepAliveTimeout is a dead link, every reconnect waits a full-jitter
backoff, subscribes again and says so (the source then takes a REST
snapshot), and the link is rotated before the access token it was opened
with expires. `HubStream` runs one `HubChannel` per channel type, which is
correct whether a second SwitchChannels adds to or replaces the first.

Never logged: the bearer token and the connection URLs (they carry the
connection token); see stocktracker/lib/logs.py for the filter behind that.
Shapes: ../shared/reference/ssi-fastconnect.md section 5.
"""

import asyncio
import json
import logging
import random
import time
from urllib.parse import urlencode

import httpx
import websockets
from websockets.exceptions import InvalidStatus, WebSocketException

from stocktracker.lib.aio import running

from . import metrics

log = logging.getLogger("apps.feed.hub")

HUB = "FcMarketDataV2Hub"
PATH = "v2.0/signalr/"
CONNECTION_DATA = json.dumps([{"name": HUB}], separators=(",", ":"))
CLIENT_PROTOCOL = "1.5"
CHANNEL_TYPES = ("X-TRADE", "X-QUOTE", "R", "MI", "F")
DEFAULT_KEEPALIVE_S = 20.0  # when negotiate does not say (SignalR's own default)
NO_KEEPALIVE_WATCHDOG_S = 120.0  # a server that turned keep-alives off: only a long silence is fatal
BACKOFF_CAP_S = 30.0
STABLE_AFTER_S = 30.0  # a link that lived this long resets the backoff


class HubError(Exception):
    """The hub could not be reached or spoke something unexpected."""


class HubAuthRefused(HubError):
    """The hub refused the bearer token (HTTP 401/403 at negotiate or connect)."""


class HubSilent(HubError):
    """No frame (not even a keep-alive) within KeepAliveTimeout."""


def parse_frame(text):
    """(messages, errors) of one text frame.

    `messages` are (DataType, content dict) from Broadcast calls; `errors` are
    strings from Error calls and failed invocations. A frame that is not what
    the protocol allows raises ValueError (the caller counts it and goes on).
    """
    frame = json.loads(text)
    if not isinstance(frame, dict):
        raise ValueError("frame is not a JSON object")
    messages, errors = [], []
    if frame.get("E") is not None:  # an invocation result or a transport error
        errors.append(f"invocation {frame.get('I')}: {frame.get('E')}")
    calls = frame.get("M")
    if calls is None:
        return messages, errors
    if not isinstance(calls, list):
        raise ValueError("`M` is not a list")
    for call in calls:
        if not isinstance(call, dict):
            raise ValueError("a hub call is not an object")
        if str(call.get("H") or HUB).lower() != HUB.lower():
            continue
        method = str(call.get("M") or "")
        args = call.get("A") or []
        if not isinstance(args, list):
            raise ValueError("`A` is not a list")
        if method.lower() == "broadcast":
            for arg in args:
                messages.extend(_broadcast(arg))
        elif method.lower() == "error":
            errors.append(" ".join(str(arg) for arg in args)[:300] or "Error without a message")
    return messages, errors


def _broadcast(arg):
    envelope = json.loads(arg) if isinstance(arg, str) else arg
    if not isinstance(envelope, dict):
        raise ValueError("Broadcast argument is not an object")
    fields = {str(k).lower(): v for k, v in envelope.items()}
    data_type = str(fields.get("datatype") or "").strip().upper()
    content = fields.get("content")
    if isinstance(content, str):
        content = json.loads(content)
    items = content if isinstance(content, list) else [content]
    if not data_type or not all(isinstance(item, dict) for item in items):
        raise ValueError("Broadcast without a DataType or an object Content")
    return [(data_type, item) for item in items]


def backoff(attempt, base=1.0, cap=BACKOFF_CAP_S):
    """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
    return random.uniform(0, min(cap, base * 2**attempt))


class HubChannel:
    """One connection subscribed to one channel string, kept alive forever.

    `tokens` is the REST client (it owns the access token: `access_token()`,
    `refresh_at` on its clock). `on_message(data_type, content)` is called for
    every message, `on_link(channel, up, reason)` when the link comes up
    (subscribed) or goes down.
    """

    def __init__(
        self,
        base_url,
        channel,
        tokens,
        *,
        on_message,
        on_link,
        backoff_base=1.0,
        timeout=10.0,
        keepalive=None,
    ):
        self.base = base_url.rstrip("/") + "/" + PATH
        self.channel = channel
        self.kind = channel.split(":", 1)[0]
        self.tokens = tokens
        self.on_message = on_message
        self.on_link = on_link
        self.backoff_base = backoff_base
        self.timeout = timeout
        self.keepalive_override = keepalive  # tests: watchdog seconds regardless of negotiate
        self.up = False
        self.sessions = 0  # links that came up
        self.frames = 0
        self.messages = 0
        self._invocation = 0
        self._force_token = False

    # --- the loop ----------------------------------------------------------------------

    async def run(self):
        attempt = 0
        async with httpx.AsyncClient(timeout=self.timeout, headers={"Accept": "application/json"}) as http:
            while running():
                started = time.monotonic()
                reason = "closed"
                try:
                    reason = await self._session(http)
                except asyncio.CancelledError:
                    raise
                except HubAuthRefused as exc:
                    reason = "auth_refused"
                    log.warning("SSI hub %s: %s; a fresh access token next time", self.kind, exc)
                    self._force_token = True
                except HubSilent as exc:
                    reason = "silent"
                    log.warning("SSI hub %s: %s; reconnecting", self.kind, exc)
                except (OSError, TimeoutError, HubError, WebSocketException, httpx.HTTPError, ValueError) as exc:
                    reason = "dropped" if self.up else "connect_failed"
                    log.warning("SSI hub %s: %s (%s)", self.kind, type(exc).__name__, _short(exc))
                except Exception as exc:  # noqa: BLE001 - e.g. the REST client failing to get a token
                    reason = "connect_failed"
                    log.warning("SSI hub %s: %s (%s)", self.kind, type(exc).__name__, _short(exc))
                finally:
                    if self.up:
                        self.up = False
                        self.on_link(self, False, reason)
                metrics.HUB_RECONNECTS.labels(reason).inc()
                if reason == "rotate":
                    attempt = 0
                    continue  # a planned reconnect: at once
                if time.monotonic() - started >= STABLE_AFTER_S:
                    attempt = 0
                delay = backoff(attempt, self.backoff_base)
                attempt += 1
                log.info("SSI hub %s: reconnecting in %.2f s (attempt %d)", self.kind, delay, attempt)
                await asyncio.sleep(delay)

    async def _session(self, http):
        """One link from negotiate to its end; returns why it ended (`rotate`)."""
        token = await self.tokens.access_token(force=self._force_token)
        self._force_token = False
        rotate_at = self.tokens.refresh_at  # on the token client's clock
        headers = {"Authorization": f"Bearer {token}"}
        answer = await self._negotiate(http, headers)
        connection_token = answer.get("ConnectionToken")
        if not isinstance(connection_token, str) or not connection_token:
            raise HubError("negotiate answered without a ConnectionToken")
        if answer.get("TryWebSockets") is False:
            log.warning("SSI hub %s: negotiate says TryWebSockets=false; trying WebSockets anyway", self.kind)
        protocol = str(answer.get("ProtocolVersion") or CLIENT_PROTOCOL)
        keepalive = answer.get("KeepAliveTimeout")
        watchdog = self.keepalive_override or (float(keepalive) if keepalive else NO_KEEPALIVE_WATCHDOG_S)
        query = {
            "transport": "webSockets",
            "clientProtocol": protocol,
            "connectionToken": connection_token,
            "connectionData": CONNECTION_DATA,
        }
        ws_url = "ws" + self.base.removeprefix("http") + "connect?" + urlencode(query)
        try:
            ws = await websockets.connect(
                ws_url,
                additional_headers=headers,
                open_timeout=self.timeout,
                ping_interval=None,  # the hub's keep-alives are the liveness signal
                max_size=16 * 2**20,
                close_timeout=2.0,
                compression=None,
                logger=_WS_LOG,
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise HubAuthRefused(f"connect answered HTTP {exc.response.status_code}") from None
            raise HubError(f"connect answered HTTP {exc.response.status_code}") from None
        try:
            await self._start(http, headers, query)
            self._invocation += 1
            call = {"H": HUB, "M": "SwitchChannels", "A": [self.channel], "I": self._invocation}
            await ws.send(json.dumps(call))
            subscribed = False  # up once the server answers anything after the subscription
            while True:
                if not running():  # a stop that wait_for swallowed (stocktracker.lib.aio.running)
                    raise asyncio.CancelledError
                wait = watchdog
                left = rotate_at - self.tokens.clock()
                if left <= 0:
                    log.info("SSI hub %s: access token due for refresh; reconnecting with a fresh one", self.kind)
                    return "rotate"
                try:
                    text = await asyncio.wait_for(ws.recv(), timeout=min(wait, left))
                except TimeoutError:
                    if rotate_at - self.tokens.clock() <= 0:
                        continue
                    raise HubSilent(f"no frame for {watchdog:.1f} s (KeepAliveTimeout)") from None
                self.frames += 1
                if not subscribed:
                    subscribed = self.up = True
                    self.sessions += 1
                    log.info("SSI hub %s: subscribed (%d symbols, protocol %s)", self.kind, self._count(), protocol)
                    self.on_link(self, True, "subscribed")
                self._handle(text)
        finally:
            await ws.close()
            task = asyncio.ensure_future(self._abort(http, headers, query))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    async def _negotiate(self, http, headers):
        params = {"clientProtocol": CLIENT_PROTOCOL, "connectionData": CONNECTION_DATA}
        response = await http.get(self.base + "negotiate", params=params, headers=headers)
        if response.status_code in (401, 403):
            raise HubAuthRefused(f"negotiate answered HTTP {response.status_code}")
        if response.status_code != 200:
            raise HubError(f"negotiate answered HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise HubError("negotiate answer is not JSON") from None
        if not isinstance(answer, dict):
            raise HubError("negotiate answer is not an object")
        return answer

    async def _start(self, http, headers, query):
        """`start` as the JS client sends it; some servers need it, ours works without."""
        try:
            timeout = min(5.0, self.timeout)
            response = await http.get(self.base + "start", params=query, headers=headers, timeout=timeout)
            if response.status_code != 200:
                log.info("SSI hub %s: start answered HTTP %d; going on", self.kind, response.status_code)
        except httpx.HTTPError as exc:
            log.info("SSI hub %s: start failed (%s); going on", self.kind, type(exc).__name__)

    async def _abort(self, http, headers, query):
        """Tell the server the old connection is gone (best effort; it times out anyway)."""
        try:
            await http.post(self.base + "abort", params=query, headers=headers, timeout=2.0)
        except Exception:  # noqa: BLE001, S110 - the server forgets the connection on its own
            pass

    def _handle(self, text):
        if text in ("{}", ""):
            return  # keep-alive
        try:
            messages, errors = parse_frame(text)
        except (ValueError, TypeError) as exc:
            metrics.HUB_ERRORS.labels("malformed").inc()
            log.warning("SSI hub %s: malformed frame ignored (%s): %.120r", self.kind, exc, text)
            return
        for error in errors:
            metrics.HUB_ERRORS.labels("error_call").inc()
            log.warning("SSI hub %s: server error: %s", self.kind, error)
        for data_type, content in messages:
            self.messages += 1
            _counter(data_type).inc()
            try:
                self.on_message(data_type, content)
            except Exception:  # one bad message must not drop the link
                metrics.HUB_ERRORS.labels("unreadable").inc()
                log.exception("SSI hub %s: could not apply a %s message", self.kind, data_type)

    def _count(self):
        return len(self.channel.split(":", 1)[-1].split("-"))


_WS_LOG = logging.getLogger("apps.feed.hub.ws")
_COUNTERS = {}
_KNOWN_TYPES = {*CHANNEL_TYPES, "X", "B", "OL", "TRADE", "QUOTE"}


def _counter(data_type):
    """The message counter of a data type (the server's strings never become new labels)."""
    label = data_type if data_type in _KNOWN_TYPES else "other"
    counter = _COUNTERS.get(label)
    if counter is None:
        counter = _COUNTERS[label] = metrics.HUB_MESSAGES.labels(label)
    return counter


_BACKGROUND = set()  # abort requests in flight (a reference keeps them alive)


def _short(exc):
    """An exception's text without any URL in it (connection URLs carry the token)."""
    text = str(exc)
    return "see debug log" if "connectionToken" in text or "://" in text else text[:200]


class HubStream:
    """One `HubChannel` per channel type; `up` when every one is subscribed."""

    def __init__(self, base_url, tokens, *, on_message, on_link=None, backoff_base=1.0, timeout=10.0, keepalive=None):
        self.base_url = base_url
        self.tokens = tokens
        self.on_message = on_message
        self.on_link_change = on_link
        self.options = {"backoff_base": backoff_base, "timeout": timeout, "keepalive": keepalive}
        self.channels = []
        self.tasks = []
        self.down_since = time.monotonic()
        self.last_drop = time.monotonic()  # what the hub sent before this may have missed updates
        self.up_since = None  # when every link was last up (after being down)
        self.started_at = None

    @property
    def running(self):
        return bool(self.tasks)

    @property
    def up(self):
        return bool(self.channels) and all(channel.up for channel in self.channels)

    def start(self, subscriptions):
        """Open one link per channel string (e.g. `X-TRADE:ACB-FPT`)."""
        self.channels = [
            HubChannel(self.base_url, sub, self.tokens, on_message=self.on_message, on_link=self._link, **self.options)
            for sub in subscriptions
        ]
        self.tasks = [asyncio.ensure_future(channel.run()) for channel in self.channels]
        self.down_since = self.last_drop = self.started_at = time.monotonic()
        self.up_since = None

    async def stop(self):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks, self.channels = [], []
        self.down_since = time.monotonic()

    def _link(self, channel, up, reason):
        if not up:
            self.last_drop = time.monotonic()
            if self.down_since is None:
                self.down_since = self.last_drop
        if self.up and self.down_since is not None:
            self.down_since = None
            self.up_since = time.monotonic()
        if not self.up:
            self.up_since = None
        if self.on_link_change:
            self.on_link_change(channel, up, reason)

    @property
    def reconnected(self):
        """True once any link of this start came up a second time."""
        return any(channel.sessions > 1 for channel in self.channels)

    def describe_down(self):
        down = [channel.kind for channel in self.channels if not channel.up]
        return "stream down: " + ", ".join(down) if down else ""

    def stats(self):
        return {
            "frames": sum(c.frames for c in self.channels),
            "messages": sum(c.messages for c in self.channels),
            "sessions": sum(c.sessions for c in self.channels),
        }
