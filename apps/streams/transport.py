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
- `ready_socket()` + `send_many()`: the same for thousands of sockets at once,
  split over threads (send() runs outside the GIL) while the event loop's
  thread waits, then `write_rest()` for what the kernel did not take;
- protocol pings (`ping_frame` + `pong_seen`), answered by every client library;
- `close(code)`: closes with RFC codes such as 1013, which daphne's ASGI close
  (autobahn's sendClose) rejects; `abort()` drops the TCP connection.

daphne's own upkeep visits every connection: `application_checker` each
second (reap finished applications, kill ones that outlive a disconnect by
--application-close-timeout) and `timeout_checker` every 2 s (handshake
timeout, --websocket_timeout, keepalive pings). At 10,000 idle sockets that
was most of an idle process's CPU. `install_upkeep()` keeps daphne's rules
but visits, each second, only the connections that changed (disconnected,
application done) and, every 2 s, only those not yet open (HTTP requests,
WebSocket handshakes); all connections are swept every `full_sweep_interval`
(at most 30 s, a quarter of --ping-interval), which is when keepalive pings
and --websocket_timeout are checked.

`check_server()` runs at start-up: the internals used here are checked against
the installed daphne / autobahn / Twisted, and unsupported versions stop the
process with a message naming the supported ones. Under any other server (or
the test communicator) `link_for()` is None and delivery falls back to the
ASGI `send`, relying on that server's own keepalive flags.
"""

import functools
import hashlib
import inspect
import logging
import struct
import sys
import time
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
    import autobahn.websocket.protocol as autobahn_websocket
    from autobahn.twisted.websocket import WebSocketServerProtocol
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import abstract, tcp
    from twisted.web import http

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
    if not hasattr(abstract.FileDescriptor, "unregisterProducer"):
        missing.append("twisted.internet.abstract.FileDescriptor.unregisterProducer")
    # Instance attributes, set in __init__.
    for cls, name in (
        (abstract.FileDescriptor, "_tempDataLen"),
        (tcp.Connection, "socket"),
        (http.HTTPChannel, "requests"),
    ):
        source = inspect.getsource(cls.__init__)
        if f"self.{name} =" not in source and f"self.{name}:" not in source:
            missing.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    # _shared_protocol_options(): autobahn copies CONFIG_ATTRS the way this source does.
    made = inspect.getsource(autobahn_websocket.WebSocketProtocol._connectionMade)
    if "for configAttr in self.CONFIG_ATTRS:" not in made or "if not hasattr(self, configAttr):" not in made:
        missing.append("autobahn.websocket.protocol.WebSocketProtocol._connectionMade (changed)")
    # install_upkeep() re-implements these daphne methods' rules: any change to them needs a port.
    for cls, name, digest in UPKEEP_SOURCES:
        original = getattr(cls_by_name(cls), name, None)
        original = getattr(original, "_stk_original", original)
        if original is None or _source_digest(original) != digest:
            missing.append(f"daphne {cls}.{name} (changed)")
    return missing


# (class, method, sha256 prefix of its source in daphne 4.2.3): the rules install_upkeep() keeps.
UPKEEP_SOURCES = (
    ("Server", "application_checker", "ccb688341a7d0bc1"),
    ("Server", "timeout_checker", "6b70373a3a77cb2b"),
    ("Server", "protocol_connected", "3fe5af10e11e8ad7"),
    ("Server", "protocol_disconnected", "c1f5fe8cdedc09dc"),
    ("Server", "create_application", "f1e300b4ecf636c8"),
    ("WebSocketProtocol", "check_timeouts", "0e2ee6816a93a598"),
    ("WebSocketProtocol", "onOpen", "6be066589e00abb0"),
)


def cls_by_name(name):
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    return {"Server": Server, "WebSocketProtocol": WebSocketProtocol}[name]


def _source_digest(function):
    try:
        return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    except (OSError, TypeError):  # no source to read: not the code we know
        return None


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
    install_upkeep()
    _shared_protocol_options()
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


def _shared_protocol_options():
    """Autobahn copies its ~30 protocol options from the factory onto every
    connection (the copy pushes the protocol's __dict__ past 85 keys: 1.7 KB
    more per socket) and pretty-prints them for a debug line (~0.15 ms per
    connect, even with debug logging off). daphne has one factory whose
    options are set before it listens: they are put on daphne's protocol
    class once instead; instances then read them from the class."""
    from daphne.ws_protocol import WebSocketProtocol

    if "_stk_options" in WebSocketProtocol.__dict__:
        return
    names = tuple(WebSocketProtocol.CONFIG_ATTRS)
    WebSocketProtocol._stk_options = {"names": names, "factory": None}
    original = WebSocketProtocol._connectionMade

    def _connectionMade(self):
        cls, options = WebSocketProtocol, WebSocketProtocol._stk_options
        if options["factory"] is None:
            for name in names:
                value = getattr(self.factory, name)
                # A function (perMessageCompressionAccept) must not become a method of the class.
                setattr(cls, name, staticmethod(value) if inspect.isfunction(value) else value)
            options["factory"] = self.factory
            cls.CONFIG_ATTRS = ()
        elif options["factory"] is not self.factory:
            for name in names:  # a second factory (not daphne's way): per-instance copies, as autobahn does
                if name not in self.__dict__:
                    setattr(self, name, getattr(self.factory, name))
        original(self)

    WebSocketProtocol._connectionMade = _connectionMade


FULL_SWEEP_MAX = 30.0  # seconds between visits of every connection


def full_sweep_interval(server):
    """Often enough for daphne's keepalive pings and --websocket_timeout to be
    at most a quarter of their interval late; never more often than daphne's
    own 2 s, never less often than FULL_SWEEP_MAX."""
    bounds = [FULL_SWEEP_MAX, server.ping_interval / 4]
    if server.websocket_timeout is not None and server.websocket_timeout >= 0:
        bounds.append(server.websocket_timeout / 4)
    return max(2.0, min(bounds))


def _upkeep(server):
    """This server's watch lists: `changed` (disconnected, or application
    done: the application checker has work) and `opening` (not an open
    WebSocket yet: the timeout checker has work)."""
    found = server.__dict__.get("_stk_upkeep")
    if found is None:
        found = {"changed": set(), "opening": set(), "app_sweep": 0.0, "timeout_sweep": 0.0}
        server.__dict__["_stk_upkeep"] = found
    return found


def _check_application(server, protocol, details):
    """daphne's application_checker rules, for one connection (daphne 4.2.3,
    server.py; UPKEEP_SOURCES pins that source)."""
    import asyncio
    from concurrent.futures import CancelledError

    from daphne.server import logger

    disconnected = details.get("disconnected", None)
    application_instance = details.get("application_instance", None)
    if disconnected and time.time() - disconnected > server.application_close_timeout:
        if application_instance and not application_instance.done():
            logger.warning(
                "Application instance %r for connection %s took too long to shut down and was killed.",
                application_instance,
                repr(protocol),
            )
            application_instance.cancel()
    if application_instance and application_instance.done():
        try:
            exception = application_instance.exception()
        except (CancelledError, asyncio.CancelledError):
            pass
        else:
            if exception:
                if isinstance(exception, KeyboardInterrupt):
                    server.stop()
                else:
                    logger.error("Exception inside application: %s", exception, exc_info=exception)
                    if not disconnected:
                        protocol.handle_exception(exception)
        del server.connections[protocol]["application_instance"]
        application_instance = None
    if not application_instance and disconnected:
        del server.connections[protocol]
        _forget(protocol)


def _forget(protocol):
    """autobahn resolves `is_closed` with the protocol itself: a reference cycle
    per closed socket, which only a full collection frees, and the watchdog
    freezes the survivors of those (watchdog._on_gc), so closed sockets piled
    up until the next thaw (RSS +25 % over a soak). Once daphne forgets the
    connection, that back-reference goes: refcounting frees the socket."""
    closed = getattr(protocol, "is_closed", None)
    if getattr(closed, "called", False) and getattr(closed, "result", None) is protocol:
        closed.result = None


def _application_checker(self):
    from daphne.server import reactor

    upkeep = _upkeep(self)
    changed, opening = upkeep["changed"], upkeep["opening"]
    now = time.monotonic()
    if now >= upkeep["app_sweep"]:
        upkeep["app_sweep"] = now + full_sweep_interval(self)
        visit = list(self.connections)
    else:
        visit = list(changed)
    connections = self.connections
    for protocol in visit:
        details = connections.get(protocol)
        if details is not None:
            _check_application(self, protocol, details)
            details = connections.get(protocol)
        if details is None:
            changed.discard(protocol)
            opening.discard(protocol)
        elif "disconnected" not in details and "application_instance" not in details:
            changed.discard(protocol)  # reaped; its disconnect puts it back
    reactor.callLater(1, self.application_checker)


def _timeout_checker(self):
    from daphne.server import reactor

    upkeep = _upkeep(self)
    opening = upkeep["opening"]
    now = time.monotonic()
    if now >= upkeep["timeout_sweep"]:
        upkeep["timeout_sweep"] = now + full_sweep_interval(self)
        visit = list(self.connections)
    else:
        visit = list(opening)
    connections = self.connections
    for protocol in visit:
        if protocol not in connections:
            opening.discard(protocol)
            continue
        protocol.check_timeouts()
    reactor.callLater(2, self.timeout_checker)


def _wrap(cls, name, make):
    original = getattr(cls, name)
    if getattr(original, "_stk_original", None) is not None:
        return  # installed already
    wrapper = make(original)
    wrapper._stk_original = original
    wrapper.__name__, wrapper.__qualname__ = original.__name__, original.__qualname__
    setattr(cls, name, wrapper)


def install_upkeep():
    """Replace daphne's sweeps over every connection (see the module docstring).
    Installed before daphne's Server.run() schedules its checkers."""
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    def connected(original):
        def protocol_connected(self, protocol):
            original(self, protocol)
            _upkeep(self)["opening"].add(protocol)

        return protocol_connected

    def disconnected(original):
        def protocol_disconnected(self, protocol):
            original(self, protocol)
            _upkeep(self)["changed"].add(protocol)

        return protocol_disconnected

    def created(original):
        def create_application(self, protocol, scope):
            queue = original(self, protocol, scope)
            instance = self.connections.get(protocol, {}).get("application_instance")
            if instance is not None:
                changed = _upkeep(self)["changed"]
                instance.add_done_callback(lambda _done: changed.add(protocol))
            return queue

        return create_application

    def opened(original):
        def onOpen(self):
            original(self)
            _upkeep(self.server)["opening"].discard(self)

        return onOpen

    _wrap(Server, "protocol_connected", connected)
    _wrap(Server, "protocol_disconnected", disconnected)
    _wrap(Server, "create_application", created)
    _wrap(WebSocketProtocol, "onOpen", opened)
    _wrap(Server, "application_checker", lambda original: _application_checker)
    _wrap(Server, "timeout_checker", lambda original: _timeout_checker)


def _daphne_protocol(send):
    if isinstance(send, functools.partial) and send.args:
        protocol = send.args[0]
        # A plain TCP transport (nginx terminates TLS): its buffer is what `offer` reads.
        if hasattr(protocol, "sendCloseFrame") and hasattr(getattr(protocol, "transport", None), "dataBuffer"):
            return protocol
    return None


def _drop_http_channel(protocol):
    """After daphne's upgrade the HTTP channel the handshake came in on stays
    registered as the TCP transport's producer for the socket's lifetime,
    holding its request, headers and body buffer (~3 KB per socket). It has
    nothing left to do: unregister it so it is freed. (As a producer it only
    stopped reading from a client whose send buffer was full; delivery bounds
    that buffer itself and still wants the client's pongs.)"""
    from twisted.web.http import HTTPChannel

    transport = protocol.transport
    channel = getattr(transport, "producer", None)
    if isinstance(channel, HTTPChannel) and transport.protocol is protocol:
        transport.unregisterProducer()
        channel.requests.clear()


def expose_transport(app):
    """ASGI middleware (outermost on the websocket route): puts a `Link` for
    daphne connections into the scope under SCOPE_KEY. Built at start-up:
    under daphne, unsupported internals stop the process here."""
    check_server()

    async def middleware(scope, receive, send):
        if scope["type"] == "websocket":
            protocol = _daphne_protocol(send)
            if protocol is not None:
                _drop_http_channel(protocol)
                scope[SCOPE_KEY] = Link(protocol)  # daphne's own scope dict: no copy kept per socket
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


_SPLIT_MIN = 512  # sockets: below this one thread writes them all
_pool = None


def _send_part(socks, frame, sent, start, stop):
    for i in range(start, stop):
        try:
            sent[i] = socks[i].send(frame)
        except OSError:
            sent[i] = 0


def send_many(socks, frame: bytes, threads: int):
    """Write `frame` to every socket in `socks`; how much each took, in order.
    send() releases the GIL, so with `threads` > 1 the writes share the cores;
    the calling thread writes one share and waits for the others, so nothing
    else on the event loop touches these sockets meanwhile."""
    global _pool
    n = len(socks)
    sent = [0] * n
    if threads <= 1 or n < _SPLIT_MIN:
        _send_part(socks, frame, sent, 0, n)
        return sent
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="stk-send")
    share = -(-n // threads)
    futures = [
        _pool.submit(_send_part, socks, frame, sent, start, min(n, start + share)) for start in range(share, n, share)
    ]
    _send_part(socks, frame, sent, 0, min(n, share))
    for future in futures:
        future.result()
    return sent


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
        Frames are whole messages and every write happens while the event
        loop's thread is in our code, so they never interleave with daphne's own."""
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN or protocol.send_queue:
            return 0
        sock = self.ready_socket()
        if sock is not None:
            # Nothing queued: hand the bytes to the kernel now, as asyncio's
            # own transports do (Twisted would buffer them and wait for the
            # next writable event: two epoll changes per socket per frame).
            try:
                sent = sock.send(frame)
            except OSError:
                sent = 0  # EAGAIN, or an error Twisted's write finds and closes on
            if sent == len(frame):
                return 1
            frame = frame[sent:]
        elif limit is not None and self.backlog() > limit:
            return -1
        protocol.transport.write(frame)
        return 1

    def ready_socket(self):
        """The TCP socket, when the connection is open and nothing waits for it
        in user space: the frame can go to the kernel now (`send_many`)."""
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN or protocol.send_queue:
            return None
        transport = protocol.transport
        if self.backlog() or transport.TLS or not transport.connected or transport.disconnecting:
            return None
        return transport.socket

    def write_rest(self, rest: bytes):
        """What the kernel did not take of a frame `send_many` wrote: Twisted buffers it."""
        self.protocol.transport.write(rest)

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
