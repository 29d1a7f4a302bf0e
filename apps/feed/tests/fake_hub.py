"""A fake SSI FastConnect streaming hub: classic SignalR over a real WebSocket on 127.0.0.1.

One asyncio `websockets` server in its own thread serves both the HTTP
requests (`negotiate`, `start`) and the `connect` WebSocket, speaking the
frames of the reference (section 5): `{"C":..,"S":1,"M":[]}` on open, `{}`
keep-alives every KeepAliveTimeout / 2, `{"C":..,"M":[Broadcast, ...]}` with
`A[0]` a JSON string whose `Content` is a JSON string again, `{"I": n}` for
each invocation (a SwitchChannels replaces the link's subscription, as SSI's
own .NET client assumes; `replace_on_switch=False` adds to it instead).
Bearer tokens are checked against a FakeSSI's issued tokens; the connection
token holds `+` and `/`, so a client that does not URL-escape it is refused
at connect.

Failure modes, each injected for real:

    hub.refuse_negotiate(times)   negotiate answers HTTP 401
    hub.drop_all()                every WebSocket is cut (TCP reset, no close frame)
    hub.silence()                 links open, but nothing is sent on any (no keep-alive, no reply)
    hub.send_raw(text)            any frame, e.g. a malformed one
    hub.send_error(text)          an `Error` hub call
    hub.close_expired = True      links whose token expired are closed (off by default)
    hub.reject(text, times, error_call=False)   the next SwitchChannels answer {"I":n,"E":text}
                                  (and an `Error` call with the text, when asked)
    hub.acknowledge = False       SwitchChannels is never answered (keep-alives go on)
    hub.max_symbols = n           a SwitchChannels with more symbols is refused (a per-key limit)
"""

import asyncio
import base64
import json
import logging
import os
import threading
import time
import uuid
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

HUB = "FcMarketDataV2Hub"
PATH = "/v2.0/signalr/"

_quiet = logging.getLogger("fake_hub")
_quiet.setLevel(logging.CRITICAL)


class Link:
    def __init__(self, ws, bearer, connection_id):
        self.ws = ws
        self.bearer = bearer
        self.id = connection_id
        self.subs = {}  # data type -> set of symbols ("ALL" for all)
        self.opened = time.time()
        self.messages = 0


class FakeHub:
    def __init__(self, ssi, *, protocol="1.5", keepalive=2.0, replace_on_switch=True):
        self.ssi = ssi  # a FakeSSI: the tokens it issued are the valid ones
        self.protocol = protocol
        self.keepalive = keepalive
        self.replace_on_switch = replace_on_switch
        self.close_expired = False
        self.negotiations = []  # (bearer, params, wall time)
        self.connects = []  # (bearer, wall time)
        self.starts = 0
        self.switches = []  # (link id, channel string)
        self.links = set()
        self.silent = False
        self.acknowledge = True
        self.max_symbols = None
        self._rejections = []  # (text, with an Error call)
        self._refuse = 0
        self._tokens = {}  # connection token -> bearer it was negotiated with
        self._loop = None
        self._server = None
        self._thread = None
        self._seq = 0

    # --- life ------------------------------------------------------------------------

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/"

    def start(self):
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._open())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-hub")
        self._thread.start()
        ready.wait(10)
        return self

    async def _open(self):
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._http,
            ping_interval=None,
            compression=None,
            logger=_quiet,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.ensure_future(self._keepalives())

    def stop(self):
        if self._loop is None:
            return

        async def close():
            self._ticker.cancel()
            self._server.close()
            for link in list(self.links):
                link.ws.transport.abort()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- controls (from any thread) ---------------------------------------------------

    def refuse_negotiate(self, times=1):
        self._refuse += times

    def drop_all(self):
        async def drop():
            for link in list(self.links):
                link.ws.transport.abort()

        self._call(drop())

    def silence(self, on=True):
        self.silent = on

    def reject(self, text, times=1, *, error_call=False):
        self._rejections.extend([(text, error_call)] * times)

    def connect_times(self):
        return [at for _, at in self.connects]

    def switches_of(self, link_id):
        return [channel for lid, channel in self.switches if lid == link_id]

    def subscribed(self, data_type=None):
        """Links subscribed (to `data_type`)."""
        return [link for link in list(self.links) if link.subs and (data_type is None or data_type in link.subs)]

    def send_raw(self, text):
        async def send():
            for link in list(self.links):
                await _send(link, text)

        self._call(send())

    def send_error(self, text):
        frame = {"C": self._cursor(), "M": [{"H": HUB, "M": "Error", "A": [text]}]}
        self.send_raw(json.dumps(frame))

    def broadcast(self, data_type, content, *, as_object=False):
        """One Broadcast frame per matching link; returns the wall time it was sent."""
        return self.broadcast_many([(data_type, content)], as_object=as_object)

    def broadcast_many(self, messages, *, as_object=False):
        """Several messages in one frame (to each link subscribed to them)."""
        return self._call(self._broadcast(messages, as_object))

    def burst(self, messages, seconds=1.0, per_frame=10):
        """Send `messages` spread evenly over `seconds`; a concurrent Future of the send times."""
        return asyncio.run_coroutine_threadsafe(self._burst(messages, seconds, per_frame), self._loop)

    # --- serving ---------------------------------------------------------------------

    def _valid(self, bearer):
        from apps.feed.ssi import jwt_exp

        with self.ssi._lock:
            known = bearer in self.ssi.valid_tokens
        return known and (jwt_exp(bearer) or 0) > time.time()

    def _http(self, connection, request):
        url = urlsplit(request.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        bearer = (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        action = url.path.removeprefix(PATH)
        if action == "negotiate":
            self.negotiations.append((bearer, params, time.time()))
            if self._refuse > 0:
                self._refuse -= 1
                return _respond(connection, 401, {"Message": "Unauthorized"})
            if not self._valid(bearer):
                return _respond(connection, 401, {"Message": "Unauthorized"})
            token = base64.b64encode(os.urandom(24)).decode() + "+x/y=="  # always + and /
            self._tokens[token] = bearer
            answer = {
                "Url": "/v2.0/signalr",
                "ConnectionToken": token,
                "ConnectionId": str(uuid.uuid4()),
                "KeepAliveTimeout": self.keepalive,
                "DisconnectTimeout": 30.0,
                "ConnectionTimeout": 110.0,
                "TryWebSockets": True,
                "ProtocolVersion": self.protocol,
                "TransportConnectTimeout": 5.0,
                "LongPollDelay": 0.0,
            }
            return _respond(connection, 200, answer)
        if action == "start":
            self.starts += 1
            if params.get("connectionToken") not in self._tokens:
                return _respond(connection, 400, {"Message": "Unrecognized user identity"})
            return _respond(connection, 200, {"Response": "started"})
        if action == "connect":
            token = params.get("connectionToken")
            if (
                params.get("transport") != "webSockets"
                or token not in self._tokens
                or self._tokens[token] != bearer
                or not self._valid(bearer)
                or json.loads(params.get("connectionData") or "[]") != [{"name": HUB}]
            ):
                return _respond(connection, 401 if not self._valid(bearer) else 400, {"Message": "refused"})
            self.connects.append((bearer, time.time()))
            return None  # go on with the WebSocket handshake
        return _respond(connection, 404, {"Message": "not found"})

    async def _handler(self, ws):
        bearer = (ws.request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        link = Link(ws, bearer, str(uuid.uuid4()))
        self.links.add(link)
        try:
            if not self.silent:
                await ws.send(json.dumps({"C": self._cursor(), "S": 1, "M": []}))
            async for text in ws:
                call = json.loads(text)
                if call.get("M") == "SwitchChannels" and call.get("H", "").lower() == HUB.lower():
                    channel = call["A"][0]
                    self.switches.append((link.id, channel))
                    kind, _, symbols = channel.partition(":")
                    wanted = {s.upper() for s in symbols.split("-")}
                    refusal = self._rejections.pop(0) if self._rejections else None
                    if refusal is None and self.max_symbols is not None and len(wanted) > self.max_symbols:
                        refusal = (f"Too many symbols: {len(wanted)} > {self.max_symbols}", False)
                    if refusal is not None:
                        if refusal[1]:
                            error = {"C": self._cursor(), "M": [{"H": HUB, "M": "Error", "A": [refusal[0]]}]}
                            await ws.send(json.dumps(error))
                        await ws.send(json.dumps({"I": str(call.get("I")), "E": refusal[0]}))
                        continue
                    subs = {} if self.replace_on_switch else link.subs
                    subs[kind] = wanted
                    link.subs = subs
                    if not self.silent and self.acknowledge:
                        await ws.send(json.dumps({"I": str(call.get("I"))}))
                elif not self.silent:
                    await ws.send(json.dumps({"I": str(call.get("I")), "E": "unknown method"}))
        except ConnectionClosed:
            pass
        finally:
            self.links.discard(link)

    async def _keepalives(self):
        while True:
            await asyncio.sleep(self.keepalive / 2)
            for link in list(self.links):
                if self.close_expired and not self._valid(link.bearer):
                    link.ws.transport.abort()
                    continue
                if not self.silent:
                    await _send(link, "{}")

    def _cursor(self):
        self._seq += 1
        return f"d-{self._seq:08X},{self._seq}|B,0|C,1"

    def _frames(self, messages, as_object):
        """{link: frame text} for the links subscribed to any of `messages`."""
        out = {}
        for link in list(self.links):
            calls = []
            for data_type, content in messages:
                wanted = link.subs.get(data_type)
                key = content.get("IndexId") if data_type == "MI" else content.get("Symbol")
                if wanted is None or ("ALL" not in wanted and str(key).upper() not in wanted):
                    continue
                inner = content if as_object else json.dumps(content)
                calls.append({"H": HUB, "M": "Broadcast", "A": [json.dumps({"DataType": data_type, "Content": inner})]})
            if calls:
                link.messages += len(calls)
                out[link] = json.dumps({"C": self._cursor(), "M": calls})
        return out

    async def _broadcast(self, messages, as_object):
        if self.silent:
            return time.time()
        sent = time.time()
        for link, frame in self._frames(messages, as_object).items():
            await _send(link, frame)
        return sent

    async def _burst(self, messages, seconds, per_frame):
        times = []
        start = time.monotonic()
        groups = [messages[i : i + per_frame] for i in range(0, len(messages), per_frame)]
        for n, group in enumerate(groups):
            due = start + seconds * n / max(1, len(groups))
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            times.append(await self._broadcast(group, False))
        return times


def broadcast_frame(messages, cursor="d-0,0|B,0|C,1"):
    """One SignalR frame of Broadcast calls as SSI sends them: `A[0]` a JSON
    string whose `Content` is a JSON string again."""
    calls = [
        {"H": HUB, "M": "Broadcast", "A": [json.dumps({"DataType": kind, "Content": json.dumps(content)})]}
        for kind, content in messages
    ]
    return json.dumps({"C": cursor, "M": calls})


async def _send(link, text):
    try:
        await link.ws.send(text)
    except ConnectionClosed:
        pass


def _respond(connection, status, body):
    response = connection.respond(status, json.dumps(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    return response


def trade(symbol, price, volume, total, side="BU", **extra):
    """An X-TRADE message as SSI sends it (numbers as JSON floats)."""
    return {
        "RType": "X-TRADE",
        "TradingDate": extra.pop("TradingDate", time.strftime("%d/%m/%Y")),
        "Time": time.strftime("%H:%M:%S"),
        "Isin": symbol,
        "Symbol": symbol,
        "LastPrice": float(price),
        "LastVol": float(volume),
        "TotalVol": float(total),
        "TotalVal": float(total * price),
        "Side": side,
        "MarketId": "HOSE",
        "Exchange": "HOSE",
        "TradingSession": "LO",
        "TradingStatus": "N",
        **extra,
    }
