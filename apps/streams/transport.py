"""The one module that reaches into the ASGI server's internals (daphne).

ASGI has no back-pressure, no protocol pings and no way to write the same
bytes to many sockets. Under daphne this module reaches each connection's
autobahn protocol object (daphne passes `send=partial(server.handle_reply,
protocol)`) and gives the streams a `Link` per socket:

- `backlog()`: bytes written but not yet taken by the kernel, so delivery can
  stop writing (and conflate) to a client that does not read;
- `write(frame)`: writes an already framed WebSocket message (built once per
  process by `text_frame`) straight to the TCP socket, no task, no per-socket
  encoding; what the kernel does not take goes to Twisted's buffer;
- protocol pings (`ping_frame` + `pong_seen`), answered by every client library;
- `close(code)`: closes with RFC codes such as 1013, which daphne's ASGI close
  (autobahn's sendClose) rejects; `abort()` drops the TCP connection.

`check_server()` runs at start-up: the internals used here are checked against
the installed daphne / autobahn / Twisted, and unsupported versions stop the
process with a message naming the supported ones. Under any other server (or
the test communicator) `link_for()` is None and delivery falls back to the
ASGI `send`, relying on that server's own keepalive flags.
"""

import functools
import inspect
import logging
import struct
import sys
from importlib.metadata import PackageNotFoundError, version

from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger("apps.streams")

SCOPE_KEY = "stocktracker.ws_link"

# (distribution, first supported, first unsupported): the internals below were
# read from, and are tested against, these releases.
SUPPORTED = (("daphne", (4, 2, 2), (4, 3)), ("autobahn", (24, 4), (27,)), ("Twisted", (24, 3), (27,)))


def _as_tuple(text):
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def unsupported_versions(installed=None):
    """[(distribution, installed version)] outside SUPPORTED; empty when all is well."""
    found = []
    for dist, low, high in SUPPORTED:
        try:
            have = installed[dist] if installed is not None else version(dist)
        except (PackageNotFoundError, KeyError):
            found.append((dist, "not installed"))
            continue
        if not (low <= _as_tuple(have) < high):
            found.append((dist, have))
    return found


def supported_text():
    return ", ".join(
        f"{dist} >= {'.'.join(map(str, low))}, < {'.'.join(map(str, high))}" for dist, low, high in SUPPORTED
    )


def missing_internals():
    """The attributes this module uses that the installed server no longer has."""
    from autobahn.twisted.websocket import WebSocketServerProtocol
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import abstract, tcp

    wanted = [
        (Server, "handle_reply"),
        (WebSocketProtocol, "handle_reply"),
        (WebSocketServerProtocol, "sendCloseFrame"),
        (WebSocketServerProtocol, "_onPong"),
        (WebSocketServerProtocol, "STATE_OPEN"),
        (abstract.FileDescriptor, "dataBuffer"),
        (abstract.FileDescriptor, "offset"),
        (tcp.Connection, "abortConnection"),
        (tcp.Connection, "TLS"),
    ]
    missing = [f"{cls.__module__}.{cls.__qualname__}.{name}" for cls, name in wanted if not hasattr(cls, name)]
    # Instance attributes, set in __init__.
    for cls, name in ((abstract.FileDescriptor, "_tempDataLen"), (tcp.Connection, "socket")):
        source = inspect.getsource(cls.__init__)
        if f"self.{name} =" not in source and f"self.{name}:" not in source:
            missing.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    return missing


_checked = False


def check_server():
    """At start-up under daphne: stop with a clear error if its internals are not the ones we know."""
    global _checked
    if _checked or "daphne.server" not in sys.modules:
        return
    bad = unsupported_versions()
    if bad:
        have = ", ".join(f"{dist} {ver}" for dist, ver in bad)
        raise ImproperlyConfigured(
            f"apps.streams.transport supports {supported_text()}; installed: {have}. "
            "Install a supported version (requirements.txt) or port apps/streams/transport.py."
        )
    missing = missing_internals()
    if missing:
        raise ImproperlyConfigured(f"daphne internals changed ({', '.join(missing)}): port apps/streams/transport.py")
    _install_pong_hook()
    _checked = True


def _install_pong_hook():
    # Autobahn calls protocol._onPong(payload) for every pong; daphne does not
    # use it. Remember the last payload on the protocol: the delivery tick
    # compares it with the nonce it sent (one comparison per socket per tick).
    from daphne.ws_protocol import WebSocketProtocol

    if getattr(WebSocketProtocol, "_stk_pong_hook", False):
        return
    original = WebSocketProtocol._onPong

    def _onPong(self, payload):
        if payload[:3] == b"stk":  # delivery's pings, not daphne's own keepalive
            self.stk_pong = payload
        original(self, payload)

    WebSocketProtocol._onPong = _onPong
    WebSocketProtocol._stk_pong_hook = True


def _daphne_protocol(send):
    if isinstance(send, functools.partial) and send.args:
        protocol = send.args[0]
        # A plain TCP transport (nginx terminates TLS): its buffer is what `offer` reads.
        if hasattr(protocol, "sendCloseFrame") and hasattr(getattr(protocol, "transport", None), "dataBuffer"):
            return protocol
    return None


def expose_transport(app):
    """ASGI middleware (outermost on the websocket route): puts a `Link` for
    daphne connections into the scope under SCOPE_KEY. Built at start-up:
    under daphne, unsupported internals stop the process here."""
    check_server()

    async def middleware(scope, receive, send):
        if scope["type"] == "websocket":
            protocol = _daphne_protocol(send)
            if protocol is not None:
                scope = {**scope, SCOPE_KEY: Link(protocol)}
        return await app(scope, receive, send)

    return middleware


def link_for(scope):
    return scope.get(SCOPE_KEY)


def _frame(opcode, payload: bytes) -> bytes:
    """One unmasked, unfragmented server frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def text_frame(payload: bytes) -> bytes:
    """A text message framed once; the same bytes go to every socket."""
    return _frame(0x1, payload)


def ping_frame(nonce: bytes) -> bytes:
    return _frame(0x9, nonce)


class Link:
    """A thin view of one daphne WebSocket connection."""

    __slots__ = ("__weakref__", "protocol")

    def __init__(self, protocol):
        self.protocol = protocol

    def is_open(self) -> bool:
        return self.protocol.state == self.protocol.STATE_OPEN

    def backlog(self) -> int:
        """Bytes buffered in user space for this client."""
        transport = self.protocol.transport
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    def write(self, frame: bytes) -> bool:
        """Write a framed message; False if the socket is not open."""
        return self.offer(frame, None) > 0

    def offer(self, frame: bytes, limit) -> int:
        """Write a framed message unless more than `limit` bytes already wait
        for this client: 1 written, -1 held back (backlogged), 0 not open.
        Frames are whole messages and every write happens on the event loop's
        thread, so they never interleave with daphne's own."""
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN or protocol.send_queue:
            return 0
        transport = protocol.transport
        waiting = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        if waiting == 0 and not transport.TLS and transport.connected and not transport.disconnecting:
            # Nothing queued: hand the bytes to the kernel now, as asyncio's
            # own transports do (Twisted would buffer them and wait for the
            # next writable event: two epoll changes per socket per frame).
            try:
                sent = transport.socket.send(frame)
            except OSError:
                sent = 0  # EAGAIN, or an error Twisted's write finds and closes on
            if sent == len(frame):
                return 1
            frame = frame[sent:]
        elif limit is not None and waiting > limit:
            return -1
        transport.write(frame)
        return 1

    def pong_seen(self, nonce: bytes) -> bool:
        return self.protocol.__dict__.get("stk_pong") == nonce

    def close(self, code: int):
        """Close with any code. Autobahn's public sendClose() refuses the RFC
        codes above 1000 (1013 "try again later" among them); the frame itself
        is valid, so send it the way daphne sends 1011."""
        self.protocol.sendCloseFrame(code=code, isReply=False)

    def abort(self):
        """Drop the TCP connection now (frees its buffers); used once a close
        frame could not be delivered to a client that stopped reading."""
        transport = getattr(self.protocol, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
