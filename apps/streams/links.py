"""Writing frames to daphne sockets: one framing per process, one write per
socket, no task and no queue per socket.

A `Link` is a thin view of one daphne WebSocket connection (made by
`port.expose_transport`):
- `backlog()`: bytes written but not yet taken by the kernel, so delivery
  can stop writing (and conflate) to a client that does not read;
- `write(frame)` / `offer(frame, limit)`: an already framed message
  (`text_frame`, built once per process) straight to the TCP socket; what the
  kernel does not take goes to Twisted's buffer;
- `ready_socket()` + `send_many()`: the same for thousands of sockets at
  once, split over threads (send() runs outside the GIL) while the event
  loop's thread waits, then `write_rest()` for what the kernel did not take;
- protocol pings (`ping_frame` + `pong_seen`), answered by every client library;
- `close(code)`: any close code, 1013 included (daphne's ASGI close cannot
  send it); `abort()` drops the TCP connection;
- `deny(status)`: refuses the handshake with a plain HTTP status (daphne's
  ASGI close before accept always answers 403).
"""

import struct

SCOPE_KEY = "stocktracker.ws_link"


def link_for(scope):
    """The socket's Link under daphne, else None (other servers, tests)."""
    return scope.get(SCOPE_KEY)


async def close(send, link, code):
    """Close a socket with `code`. RFC codes above 1000 (1013 "try again
    later") go through the Link: daphne's ASGI close cannot carry them."""
    if code is not None and code != 1000 and code < 3000 and link is not None:
        link.close(code)
        return
    message = {"type": "websocket.close"}
    if code is not None:
        message["code"] = code
    await send(message)


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

    def deny(self, status: int, reason: str) -> bool:
        """Refuse the handshake with a plain HTTP `status`, as daphne's
        serverReject() does with 403; False when it is past the handshake."""
        from autobahn.websocket.types import ConnectionDeny

        protocol = self.protocol
        deferred = protocol.__dict__.pop("handshake_deferred", None)
        if deferred is None:
            return False
        deferred.errback(ConnectionDeny(code=status, reason=reason))
        protocol.server.protocol_disconnected(protocol)
        return True

    def abort(self):
        """Drop the TCP connection now (frees its buffers); used once a close
        frame could not be delivered to a client that stopped reading."""
        transport = getattr(self.protocol, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
