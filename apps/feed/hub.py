"""SSI FastConnect Data streaming hub: an async classic ASP.NET SignalR client.

Hub `FcMarketDataV2Hub` at SSI_STREAM_URL + `v2.0/signalr/`. Per connection:
negotiate (GET, bearer token; a 1.5 or 1.3 answer is fine), open the WebSocket
`connect` URL with the connection token URL-escaped (it holds `+` and `/`),
`start` when the server offers it (failure is logged, not fatal), then
`SwitchChannels(<TYPE>:<A-B-C>)`. Frames: `{}` keep-alives, `{"C":..,"M":[..]}`
with any number of `Broadcast`/`Error` calls, `{"I":..}` invocation results.

`HubChannel` keeps one such connection alive for one channel string. It is
`up` only once the server acknowledged its SwitchChannels (`{"I": n}` without
`E`): keep-alives and the init frame say nothing about the subscription. A
refusal (`E`) or an `Error` call takes it down with the reason and a backoff,
so a rejected subscription never looks like a quiet, healthy link. Silence
past KeepAliveTimeout is a dead link; every reconnect waits a full-jitter
backoff and subscribes again. A new channel string is sent on the open
connection (`switch()`): SwitchChannels most likely replaces the previous
subscription (SSI's .NET client keeps one string and re-sends it alone after
a reconnect), so a link always sends its whole list.

`HubStream` runs the links (one per channel string) and moves them to a fresh
access token outside trading hours only (`rotation_due`: before 08:40, at
lunch, from 15:00), one link at a time, the next only once the previous is
up again.

Never logged: the bearer token and the connection URLs (they carry the
connection token); see stocktracker/lib/logs.py for the filter behind that.
Shapes: ../shared/reference/ssi-fastconnect.md section 5.
"""

import asyncio
import datetime as dt
import json
import logging
import random
import time
from typing import NamedTuple
from urllib.parse import urlencode

import httpx
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from stocktracker.lib.aio import running

from . import market, metrics

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
ACK_TIMEOUT_S = 15.0  # a SwitchChannels not answered by then: the link is not subscribed
POLL_S = 0.5  # how often a waiting link looks at its rotation request
ROTATE_MARGIN_S = 300.0  # a token this close to its expiry moves links in any quiet hour
# Tokens are made to last a stretch from this long before it: from 07:10 for
# the morning, all the lunch for the afternoon (an 8-hour token taken then lasts).
ROTATE_LEAD = dt.timedelta(minutes=90)
ROTATE_CHECK_S = 1.0
ROTATE_UP_TIMEOUT_S = 60.0  # a rotated link not back by then stops the round (no second link goes down)
TOKEN_MIN_AGE_S = 600.0  # a token younger than this is not replaced to move links


class HubError(Exception):
    """The hub could not be reached or spoke something unexpected."""


class HubAuthRefused(HubError):
    """The hub refused the bearer token (HTTP 401/403 at negotiate or connect)."""


class HubSilent(HubError):
    """No frame (not even a keep-alive) within KeepAliveTimeout."""


class HubRejected(HubError):
    """The hub refused the subscription (`E` in the result of SwitchChannels) or
    said so with an `Error` call; the text is the hub's."""


class Frame(NamedTuple):
    messages: list  # (DataType, content dict) of Broadcast calls
    errors: list  # texts of Error calls
    result: tuple | None  # (invocation id as text, error text or None) of an invocation result


def read_frame(text):
    """The `Frame` of one text frame. A frame that is not what the protocol
    allows raises ValueError (the caller counts it and goes on)."""
    frame = json.loads(text)
    if not isinstance(frame, dict):
        raise ValueError("frame is not a JSON object")
    result = None
    if "I" in frame and "M" not in frame:
        error = frame.get("E")
        result = (str(frame.get("I")), None if error is None else str(error)[:300])
    messages, errors = [], []
    calls = frame.get("M")
    if calls is None:
        return Frame(messages, errors, result)
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
    return Frame(messages, errors, result)


def parse_frame(text):
    """(messages, errors) of one text frame; a failed invocation is an error too."""
    frame = read_frame(text)
    errors = list(frame.errors)
    if frame.result is not None and frame.result[1] is not None:
        errors.insert(0, f"invocation {frame.result[0]}: {frame.result[1]}")
    return frame.messages, errors


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


def rotation_due(moment, expires_at, *, margin_s=ROTATE_MARGIN_S):
    """Whether a link whose token expires at `expires_at` (aware) should move
    to a fresh token at `moment`: never during a trading stretch; in a quiet
    hour when the token is about to expire, or, from ROTATE_LEAD before a
    stretch (08:00, the lunch), when it would expire before that stretch ends."""
    if not market.is_quiet(moment):
        return False
    margin = dt.timedelta(seconds=margin_s)
    if expires_at - moment <= margin:
        return True
    stretch = market.next_stretch(moment)
    if stretch is None or moment < stretch[0] - ROTATE_LEAD:
        return False
    return expires_at < stretch[1] + margin


def channel_strings(kind, symbols, per_link):
    """`<TYPE>:<A-B-C>` strings for `symbols`, at most `per_link` to a string
    (a link each), in a stable order so that one new listing moves few symbols."""
    ordered = sorted(dict.fromkeys(symbols))
    if not ordered:
        return []
    return [f"{kind}:{'-'.join(ordered[i : i + per_link])}" for i in range(0, len(ordered), per_link)]


class HubChannel:
    """One connection subscribed to one channel string, kept alive forever.

    `tokens` is the REST client (it owns the access token: `access_token()`,
    `expires_at` on its `clock`). `on_message(data_type, content)` is called for
    every message, `on_link(channel, up, reason)` when the link comes up (its
    subscription acknowledged) or goes down; `reason_detail` says why it last
    went down.
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
        ack_timeout=ACK_TIMEOUT_S,
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
        self.ack_timeout = ack_timeout
        self.up = False
        self.sessions = 0  # links that came up
        self.frames = 0
        self.messages = 0
        self.switches = 0  # SwitchChannels sent
        self.reason_detail = ""
        self.token_expires = None  # `tokens.expires_at` of the token this link connected with
        self._invocation = 0
        self._pending = None  # (invocation id, channel string, monotonic deadline) not yet answered
        self._ws = None
        self._force_token = False
        self._rotate = False

    # --- what others ask of it ------------------------------------------------------

    async def switch(self, channel):
        """Subscribe `channel` instead: sent on the open connection (the whole
        string: it replaces the previous one), else on the next."""
        self.channel = channel
        ws = self._ws
        if ws is not None:
            try:
                await self._subscribe(ws)
            except ConnectionClosed:
                pass  # the session notices and subscribes `channel` on its next connection

    def rotate(self):
        """Reconnect at once with a fresh access token (a planned reconnect)."""
        self._rotate = True

    # --- the loop ----------------------------------------------------------------------

    async def run(self):
        attempt = 0
        async with httpx.AsyncClient(timeout=self.timeout, headers={"Accept": "application/json"}) as http:
            while running():
                started = time.monotonic()
                reason = "closed"
                try:
                    reason = await self._session(http)
                    self.reason_detail = "rotating to a fresh token"
                except asyncio.CancelledError:
                    reason = "stopped"
                    raise
                except HubAuthRefused as exc:
                    reason = "auth_refused"
                    self.reason_detail = f"token refused: {exc}"
                    log.warning("SSI hub %s: %s; a fresh access token next time", self.kind, exc)
                    self._force_token = True
                except HubRejected as exc:
                    reason = "rejected"
                    self.reason_detail = str(exc)
                    log.warning("SSI hub %s: %s", self.kind, exc)
                except HubSilent as exc:
                    reason = "silent"
                    self.reason_detail = str(exc)
                    log.warning("SSI hub %s: %s; reconnecting", self.kind, exc)
                except (OSError, TimeoutError, HubError, WebSocketException, httpx.HTTPError, ValueError) as exc:
                    reason = "dropped" if self.up else "connect_failed"
                    self.reason_detail = f"{reason}: {type(exc).__name__} ({_short(exc)})"
                    log.warning("SSI hub %s: %s (%s)", self.kind, type(exc).__name__, _short(exc))
                except Exception as exc:  # noqa: BLE001 - e.g. the REST client failing to get a token
                    reason = "connect_failed"
                    self.reason_detail = f"{reason}: {type(exc).__name__} ({_short(exc)})"
                    log.warning("SSI hub %s: %s (%s)", self.kind, type(exc).__name__, _short(exc))
                finally:
                    self._ws = None
                    self._pending = None
                    if self.up:
                        self.up = False
                        self.on_link(self, False, reason)
                metrics.HUB_RECONNECTS.labels(reason).inc()
                if reason == "rotate":
                    attempt = 0
                    continue  # a planned reconnect: at once
                if time.monotonic() - started >= STABLE_AFTER_S and reason != "rejected":
                    attempt = 0
                delay = backoff(attempt, self.backoff_base)
                attempt += 1
                log.info("SSI hub %s: reconnecting in %.2f s (attempt %d)", self.kind, delay, attempt)
                await asyncio.sleep(delay)

    async def _session(self, http):
        """One link from negotiate to its end; returns why it ended (`rotate`)."""
        self._rotate = False
        token = await self.tokens.access_token(force=self._force_token)
        self._force_token = False
        self.token_expires = getattr(self.tokens, "expires_at", None)
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
            self._ws = ws
            await self._subscribe(ws)
            last = time.monotonic()
            while True:
                if not running():  # a stop that wait_for swallowed (stocktracker.lib.aio.running)
                    raise asyncio.CancelledError
                if self._rotate:
                    log.info("SSI hub %s: moving to a fresh access token", self.kind)
                    return "rotate"
                now = time.monotonic()
                pending = self._pending
                if pending is not None and now >= pending[2]:
                    raise HubRejected(f"SwitchChannels not acknowledged within {self.ack_timeout:.0f} s")
                if now - last >= watchdog:
                    raise HubSilent(f"no frame for {watchdog:.1f} s (KeepAliveTimeout)")
                wait = min(POLL_S, last + watchdog - now, pending[2] - now if pending else POLL_S)
                try:
                    text = await asyncio.wait_for(ws.recv(), timeout=max(0.01, wait))
                except TimeoutError:
                    continue
                last = time.monotonic()
                self.frames += 1
                self._handle(text)
        finally:
            self._ws = None
            await ws.close()
            task = asyncio.ensure_future(self._abort(http, headers, query))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    async def _subscribe(self, ws):
        self._invocation += 1
        channel = self.channel
        call = {"H": HUB, "M": "SwitchChannels", "A": [channel], "I": self._invocation}
        self._pending = (str(self._invocation), channel, time.monotonic() + self.ack_timeout)
        self.switches += 1
        await ws.send(json.dumps(call))

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
            frame = read_frame(text)
        except (ValueError, TypeError) as exc:
            metrics.HUB_ERRORS.labels("malformed").inc()
            log.warning("SSI hub %s: malformed frame ignored (%s): %.120r", self.kind, exc, text)
            return
        for data_type, content in frame.messages:
            self.messages += 1
            _counter(data_type).inc()
            try:
                self.on_message(data_type, content)
            except Exception:  # one bad message must not drop the link
                metrics.HUB_ERRORS.labels("unreadable").inc()
                log.exception("SSI hub %s: could not apply a %s message", self.kind, data_type)
        if frame.result is not None:
            self._result(*frame.result)
        if frame.errors:
            metrics.HUB_ERRORS.labels("error_call").inc(len(frame.errors))
            raise HubRejected(f"hub error: {'; '.join(frame.errors)}"[:300])

    def _result(self, ident, error):
        """The answer to a SwitchChannels of ours (the only method this client invokes)."""
        if error is not None:
            metrics.HUB_ERRORS.labels("invocation").inc()
            raise HubRejected(f"SwitchChannels refused: {error}")
        pending = self._pending
        if pending is None or ident != pending[0]:
            return  # the answer to a string that another one replaced since
        self._pending = None
        if not self.up:
            self.up = True
            self.sessions += 1
            log.info("SSI hub %s: subscribed (%d symbols)", self.kind, _count(pending[1]))
            self.on_link(self, True, "subscribed")


def _count(channel):
    return len(channel.split(":", 1)[-1].split("-"))


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
    """The links of one subscription set (a `HubChannel` per channel string);
    `up` when every one is subscribed. `now`: the market clock rotation
    follows (None: links are never rotated)."""

    def __init__(
        self,
        base_url,
        tokens,
        *,
        on_message,
        on_link=None,
        backoff_base=1.0,
        timeout=10.0,
        keepalive=None,
        ack_timeout=ACK_TIMEOUT_S,
        now=None,
        rotate_check=ROTATE_CHECK_S,
        token_min_age=TOKEN_MIN_AGE_S,
    ):
        self.base_url = base_url
        self.tokens = tokens
        self.on_message = on_message
        self.on_link_change = on_link
        self.options = {
            "backoff_base": backoff_base,
            "timeout": timeout,
            "keepalive": keepalive,
            "ack_timeout": ack_timeout,
        }
        self.now = now
        self.rotate_check = rotate_check
        self.token_min_age = token_min_age
        self.channels = []
        self.tasks = {}  # HubChannel -> its task
        self.rotator = None
        self.rotations = 0
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
        self.channels = []
        for sub in subscriptions:
            self._open(sub)
        self.down_since = self.last_drop = self.started_at = time.monotonic()
        self.up_since = None
        if self.now is not None:
            self.rotator = asyncio.ensure_future(self._rotate_forever())

    def _open(self, sub):
        channel = HubChannel(
            self.base_url, sub, self.tokens, on_message=self.on_message, on_link=self._link, **self.options
        )
        self.channels.append(channel)
        self.tasks[channel] = asyncio.ensure_future(channel.run())
        return channel

    async def update(self, subscriptions):
        """Subscribe `subscriptions` on the running links: a link whose string
        changed sends the new one on its open connection; a link is opened or
        closed only when a type needs more or fewer strings than it has."""
        if not self.running:
            self.start(subscriptions)
            return
        wanted, kept, switches = {}, [], []
        for sub in subscriptions:
            wanted.setdefault(sub.split(":", 1)[0], []).append(sub)
        have = {}
        for channel in self.channels:
            have.setdefault(channel.kind, []).append(channel)
        for kind, subs in wanted.items():
            links = have.pop(kind, [])
            for n, sub in enumerate(subs):
                if n < len(links):
                    kept.append(links[n])
                    if links[n].channel != sub:
                        switches.append(links[n].switch(sub))
                else:
                    kept.append(self._open(sub))
            have[kind] = links[len(subs) :]
        gone = [channel for links in have.values() for channel in links]
        self.channels = kept
        await asyncio.gather(*switches)
        for channel in gone:
            task = self.tasks.pop(channel)
            task.cancel()
        await asyncio.gather(*(task for channel, task in list(self.tasks.items()) if channel in gone))

    async def stop(self):
        tasks = list(self.tasks.values())
        if self.rotator is not None:
            tasks.append(self.rotator)
            self.rotator = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks, self.channels = {}, []
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

    # --- planned token rotation ---------------------------------------------------------

    async def _rotate_forever(self):
        while True:
            await asyncio.sleep(self.rotate_check)
            try:
                await self.rotate_step()
            except asyncio.CancelledError:
                raise
            except Exception:  # logged; the next check tries again
                log.warning("SSI hub: token rotation failed; trying again later", exc_info=True)

    async def rotate_step(self):
        """Move at most one link to a fresh token, if the hour and the tokens say
        so, and wait for it to be up again. Returns the link rotated, or None."""
        if not self.up:
            return None  # a link is down already: never take a second one down
        moment = self.now()
        if not market.is_quiet(moment):
            return None
        tokens = self.tokens

        def expiry(epoch):
            return moment + dt.timedelta(seconds=epoch - tokens.clock())

        due = [c for c in self.channels if c.token_expires and rotation_due(moment, expiry(c.token_expires))]
        if not due:
            return None
        current = expiry(tokens.expires_at)
        if rotation_due(moment, current) and tokens.clock() - tokens.fetched_at >= self.token_min_age:
            # A fresh token, when one would last the stretch (or this one is about to expire).
            lifetime = dt.timedelta(seconds=tokens.expires_at - tokens.fetched_at)
            if not rotation_due(moment, moment + lifetime) or current - moment <= dt.timedelta(seconds=ROTATE_MARGIN_S):
                await tokens.access_token(force=True)
        channel = next((c for c in due if c.token_expires < tokens.expires_at), None)
        if channel is None:
            return None
        sessions = channel.sessions
        log.info("SSI hub %s: moving to a fresh token (quiet hour; expires in %.0f s)", channel.kind,
                 channel.token_expires - tokens.clock())  # fmt: skip
        channel.rotate()
        self.rotations += 1
        deadline = time.monotonic() + ROTATE_UP_TIMEOUT_S
        while not (channel.up and channel.sessions > sessions):
            if time.monotonic() > deadline or channel not in self.tasks:
                log.warning("SSI hub %s: not back within %.0f s of its rotation", channel.kind, ROTATE_UP_TIMEOUT_S)
                return channel
            await asyncio.sleep(0.05)
        return channel

    # --- reading -------------------------------------------------------------------------

    @property
    def reconnected(self):
        """True once any link of this start came up a second time."""
        return any(channel.sessions > 1 for channel in self.channels)

    def describe_down(self):
        down = [channel for channel in self.channels if not channel.up]
        if not down:
            return ""
        parts = []
        for channel in down:
            detail = channel.reason_detail or "connecting"
            parts.append(f"{channel.kind} ({detail})")
        return ("stream down: " + ", ".join(parts))[:300]

    def stats(self):
        return {
            "frames": sum(c.frames for c in self.channels),
            "messages": sum(c.messages for c in self.channels),
            "sessions": sum(c.sessions for c in self.channels),
            "links": len(self.channels),
            "rotations": self.rotations,
        }
