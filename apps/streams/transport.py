"""What ASGI cannot tell a consumer: is the client still reading?

ASGI has no back-pressure and no protocol pings. Daphne writes every frame
straight into Twisted's unbounded per-connection buffer and pings a client
only after `--ping-interval` seconds of *inbound* silence, so a client that
keeps sending (or whose reading stopped while the stream flows) can pin any
amount of memory. Under daphne this module reaches the connection's autobahn
protocol object (daphne passes `send=partial(server.handle_reply, protocol)`)
and gives the consumer two things:

- `backlog()`: bytes written but not yet taken by the kernel, so the consumer
  can stop writing (and conflate) to a client that does not read;
- `ping()` / `on_pong`: WebSocket protocol pings every client library and
  browser answers without any client code;
- `close(code)`: closes with RFC codes such as 1013, which daphne's ASGI
  close (autobahn's sendClose) rejects.

Under any other server (uvicorn, the test communicator) `link_for()` returns
None and the consumer relies on that server's own keepalive flags.
"""

import functools
import logging

log = logging.getLogger("apps.streams")

SCOPE_KEY = "stocktracker.ws_link"


def _daphne_protocol(send):
    if isinstance(send, functools.partial) and send.args:
        protocol = send.args[0]
        if hasattr(protocol, "sendPing") and hasattr(protocol, "transport"):
            return protocol
    return None


def expose_transport(app):
    """ASGI middleware (outermost on the websocket route): puts a `Link` for
    daphne connections into the scope under SCOPE_KEY."""

    async def middleware(scope, receive, send):
        if scope["type"] == "websocket":
            protocol = _daphne_protocol(send)
            if protocol is not None:
                scope = {**scope, SCOPE_KEY: Link(protocol)}
        return await app(scope, receive, send)

    return middleware


def link_for(scope):
    return scope.get(SCOPE_KEY)


class Link:
    """A thin view of one daphne WebSocket connection."""

    def __init__(self, protocol):
        self.protocol = protocol
        self._pong_listener = None

    def backlog(self) -> int:
        """Bytes buffered in user space for this client (0 if unknown)."""
        transport = getattr(self.protocol, "transport", None)
        # TLS wraps the TCP transport; the bytes pile up in the inner one.
        for candidate in (transport, getattr(transport, "transport", None)):
            if candidate is not None and hasattr(candidate, "dataBuffer"):
                return (
                    len(candidate.dataBuffer) - getattr(candidate, "offset", 0) + getattr(candidate, "_tempDataLen", 0)
                )
        return 0

    def ping(self, payload: bytes, on_pong):
        """Send a protocol ping; `on_pong(payload)` is called for every pong."""
        if self._pong_listener is None:
            # autobahn calls self.onPong(payload) for each pong; daphne leaves it unset.
            self.protocol.onPong = self._pong
        self._pong_listener = on_pong
        self.protocol.sendPing(payload)

    def _pong(self, payload):
        if self._pong_listener is not None:
            self._pong_listener(payload)

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
