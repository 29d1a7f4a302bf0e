"""The port of daphne: the one module that reaches into the ASGI server's
internals (daphne, autobahn, Twisted), checked at start-up.

ASGI has no back-pressure, no protocol pings and no way to write the same
bytes to many sockets. Under daphne, `expose_transport` (ASGI middleware,
outermost on the websocket route) reaches each connection's autobahn
protocol object (daphne passes `send=partial(server.handle_reply,
protocol)`) and puts a `links.Link` for it in the scope.

It also patches, once per process:
- pongs: autobahn's `_onPong` remembers the last payload, so delivery can
  tell which sockets answered its ping;
- upkeep: daphne's checkers visit every connection every 1-2 s; here they
  visit only the connections that changed and those not yet open, with a
  full sweep every `full_sweep_interval` (when keepalive pings and
  --websocket_timeout are checked), keeping daphne's rules;
- protocol options: autobahn copies its ~30 options onto every connection;
  daphne has one factory, so they are set once on the class;
- closed connections: `_forget` breaks the cycle autobahn leaves behind, so
  refcounting frees a closed socket;
- the close handshake: autobahn aborts a connection whose peer has not
  answered our close frame in time, discarding what Twisted still buffers
  for it; `_install_close_flush` writes that first, so a reading client gets
  everything sent before the close.

`check_server()` stops the process with a message naming the supported
versions when the installed daphne / autobahn / Twisted are not the ones
this was read from. Under any other server (or the test communicator) there
is no Link and delivery falls back to the ASGI `send`, relying on that
server's own keepalive flags.
"""

import functools
import hashlib
import inspect
import logging
import sys
import time
from importlib.metadata import PackageNotFoundError, version

from django.core.exceptions import ImproperlyConfigured

from .links import SCOPE_KEY, Link

log = logging.getLogger("apps.streams")

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
        (WebSocketServerProtocol, "onCloseHandshakeTimeout"),
        (WebSocketProtocol, "serverReject"),
        (abstract.FileDescriptor, "doWrite"),
        (WebSocketServerProtocol, "_onPong"),
        (WebSocketServerProtocol, "STATE_OPEN"),
        (abstract.FileDescriptor, "dataBuffer"),
        (abstract.FileDescriptor, "offset"),
        (tcp.Connection, "abortConnection"),
        (tcp.Connection, "TLS"),
    ]
    missing = [f"{cls.__module__}.{cls.__qualname__}.{name}" for cls, name in wanted if not hasattr(cls, name)]
    # Link.deny() answers the handshake the way serverReject() does.
    reject = getattr(WebSocketProtocol, "serverReject", None)
    if reject is not None and "self.handshake_deferred.errback(" not in inspect.getsource(reject):
        missing.append("daphne.ws_protocol.WebSocketProtocol.serverReject (changed)")
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
            f"apps.streams.port supports {supported_text()}; installed: {have}. "
            "Install a supported version (requirements.txt) or port apps/streams/port.py."
        )
    missing = missing_internals()
    if missing:
        raise ImproperlyConfigured(f"daphne internals changed ({', '.join(missing)}): port apps/streams/port.py")
    _install_pong_hook()
    _install_close_flush()
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


def _install_close_flush():
    """autobahn aborts a connection whose peer has not answered our close
    frame within closeHandshakeTimeout (1 s on txaio's batched timer, which
    rounds down to the whole second: 0 to 1 s after the close), and an abort
    discards what Twisted still buffers. While the event loop is behind (a
    connect storm) that can be all of a refused socket's answer: 101, `error`
    frame and close frame. Write what is buffered first, as the reactor would
    have; once the kernel has taken it all, the peer gets a whole timeout to
    answer. A peer that does not read is still aborted."""
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import reactor

    if getattr(WebSocketProtocol, "_stk_close_flush", False):
        return
    original = WebSocketProtocol.onCloseHandshakeTimeout

    def onCloseHandshakeTimeout(self):
        transport, link = self.transport, Link(self)
        if (
            self.state == self.STATE_CLOSING
            and hasattr(transport, "dataBuffer")
            and not transport.disconnecting
            and link.backlog()
        ):
            transport.doWrite()  # as much as the kernel takes now; an error leaves it buffered
            if not link.backlog():
                self.closeHandshakeTimeoutCall = reactor.callLater(
                    self.closeHandshakeTimeout, self.onCloseHandshakeTimeout
                )
                return
        original(self)

    WebSocketProtocol.onCloseHandshakeTimeout = onCloseHandshakeTimeout
    WebSocketProtocol._stk_close_flush = True


def _shared_protocol_options():
    """Autobahn copies its ~30 protocol options from the factory onto every
    connection (memory per socket) and pretty-prints them for a debug line
    (time per connect, even with debug logging off). daphne has one factory
    whose options are set before it listens: they are put on daphne's
    protocol class once instead; instances then read them from the class."""
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
    """autobahn resolves `is_closed` with the protocol itself: a reference
    cycle per closed socket, which only a full collection frees, and the
    survivors of those are frozen (`gcplan`) until the next thaw. Once daphne
    forgets the connection, that back-reference goes: refcounting frees it."""
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
    holding its request, headers and body buffer. It has
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
