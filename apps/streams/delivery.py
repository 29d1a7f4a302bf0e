"""Per-process fan-out: one channel-layer subscription per topic, each frame
framed once and written to every local socket of the topic.

A topic is a channel-layer group (today one per stream,
`keys.stream_group`); a socket may follow several. Each socket is known here
by its `Subscriber`, which this module owns: whether it takes frames yet,
what was held back for it, which position of each topic it already has, its
backlog clock, its ping and what it was sent. Consumers hold one and call its
methods; they never see stream frames.

The hub holds one channel per topic it serves, joined to that group; one
task per topic receives each published frame once, frames it once
(`links.text_frame`) and writes the same bytes to every local socket with no
task and no queue per socket (`links.send_many`: the sockets with nothing
queued, split over WS_SEND_THREADS threads).

Slow readers: a socket whose send buffer holds more than WS_SEND_BUFFER_BYTES
gets nothing new; only the newest frame of each topic and kind is kept for it
(conflation) and written when it catches up. Still backlogged after
WS_HEARTBEAT_TIMEOUT, or silent to a protocol ping for as long, it is handed
to its `on_slow` (the consumer closes it with 4103); the others never wait.

Every WS_HEARTBEAT_INTERVAL one tick sends every socket, once however many
topics it follows, the same `heartbeat` frame and a protocol ping with one
nonce; WS_HEARTBEAT_TIMEOUT later the sockets that did not answer are slow.

The hub keeps each topic's newest snapshot: a `resync` is answered from it
(`resend`), through the same bounded path as a fan-out, so a client that
asks for snapshots and never reads them is conflated and closed like any
other slow reader, at no Redis cost.

Sockets without a daphne `Link` (other servers, the test communicator) get
the same frames through their ASGI `send`, awaited in turn.
"""

import asyncio
import logging
import secrets
import time

from autobahn.exception import Disconnected
from channels.layers import get_channel_layer
from django.conf import settings

from stocktracker.lib import keys
from stocktracker.lib.aio import PerLoop, running

from . import protocol
from .links import ping_frame, send_many, text_frame
from .metrics import fanout
from .publish import FRAME

log = logging.getLogger("apps.streams")

RETRY = 1.0  # seconds before a failed topic receive is retried
PING_MARK = b"stk"  # our pings' payloads start with it (daphne sends its own)
TICK_SLICE = 1000  # sockets per heartbeat slice: a fan-out waits for one slice at most


class Held:
    """A frame kept for a socket that is not taking frames yet (or not reading)."""

    __slots__ = ("frame", "size", "text")

    def __init__(self, text, frame, size):
        self.text, self.frame, self.size = text, frame, size


class Subscriber:
    """One socket, as the fan-out sees it.

    `link`: the daphne Link (None under other servers: frames go through
    `send`, the ASGI send). `on_slow(why)`: called once when the socket
    stopped reading or answering pings."""

    __slots__ = (
        "__weakref__",
        "backlogged_since",
        "closed",
        "link",
        "on_slow",
        "pending",
        "ping_nonce",
        "positions",
        "ready",
        "send",
        "sent",
        "sent_bytes",
        "slow",
        "topics",
    )

    def __init__(self, link, send, on_slow):
        self.link = link
        self.send = send
        self.on_slow = on_slow
        self.topics = ()
        self.ready = False  # takes frames from the hub
        self.closed = False
        self.pending = {}  # (topic, kind) -> newest Held frame (not ready, or not reading)
        self.positions = {}  # topic -> (epoch, seq) it already has: not written to it again
        self.backlogged_since = None
        self.ping_nonce = None
        self.slow = False
        self.sent = 0
        self.sent_bytes = 0

    async def write(self, text, frame=None, size=None, count=True):
        """One frame to this socket now; False if it could not be written."""
        if self.closed:
            return False
        if self.link is not None:
            written = self.link.write(frame or text_frame(text.encode()))
        else:
            try:
                await self.send({"type": "websocket.send", "text": text})
                written = True
            except Disconnected:
                # The client went away between our check and the write; its disconnect follows.
                written, self.closed = False, True
        if written and count:
            self.sent += 1
            self.sent_bytes += len(text.encode()) if size is None else size
        return written

    def close(self):
        """The socket is closing: nothing more is written to it."""
        self.closed = True

    def backlogged(self, now, why):
        """The socket did not take a frame: slow once that lasts WS_HEARTBEAT_TIMEOUT."""
        if self.backlogged_since is None:
            self.backlogged_since = now
        elif now - self.backlogged_since > settings.WS_HEARTBEAT_TIMEOUT:
            self.too_slow(why)

    def too_slow(self, why):
        if self.slow or self.closed:
            return
        self.slow = True
        self.on_slow(why)

    def flush_held(self, skip=None):
        """Write what was held back (but `skip`, about to be replaced) through the Link."""
        held, self.pending = self.pending, {}
        for key, item in held.items():
            if key != skip and self.link.write(item.frame):
                self.sent += 1
                self.sent_bytes += item.size


class Hub:
    def __init__(self):
        self.layer = get_channel_layer()
        self.topics = {}  # topic -> set of Subscribers
        self.channels = {}  # topic -> this process's channel in that group
        self.receivers = {}  # topic -> receive task
        self.positions = {}  # topic -> (epoch, seq) of the newest snapshot written
        self.latest = {}  # topic -> Held: its newest snapshot (answers `resync`)
        self.lock = asyncio.Lock()
        self.tick_task = None

    # --- membership ----------------------------------------------------------------

    async def join(self, subscriber, topics):
        """Subscribe to `topics`; frames are held for it until `ready()`.
        Raises what the channel layer raises when a topic is new to this process."""
        subscriber.ready = False
        subscriber.topics = tuple(dict.fromkeys((*subscriber.topics, *topics)))
        for topic in topics:
            if topic not in self.channels:
                async with self.lock:
                    if topic not in self.channels:
                        channel = await self.layer.new_channel(keys.HUB_CHANNEL)
                        await self.layer.group_add(topic, channel)
                        self.channels[topic] = channel
            task = self.receivers.get(topic)
            if task is None or task.done():
                self.receivers[topic] = asyncio.ensure_future(self._receive(topic))
            self.topics.setdefault(topic, set()).add(subscriber)
        self.start()

    def leave(self, subscriber):
        for topic in subscriber.topics:
            members = self.topics.get(topic)
            if members is not None:
                members.discard(subscriber)

    async def ready(self, subscriber, latest):
        """The socket was sent `welcome` and `latest` ({topic: snapshot text or
        None}): write what was held for it meanwhile (unless `latest` already
        is as new), then stream."""
        while subscriber.pending and not subscriber.closed:
            held, subscriber.pending = subscriber.pending, {}
            for (topic, kind), item in held.items():
                known = latest.get(topic)
                if kind == "snapshot" and known is not None and not protocol.is_newer(item.text, known):
                    continue
                await subscriber.write(item.text, item.frame, item.size)
        # What this socket already has: a frame at or before it is not written
        # to it again. Per socket, not per topic: the topic's own frame at that
        # position may still be on its way to the process, and the other
        # sockets need it.
        positions = {}
        for topic, text in latest.items():
            position = protocol.snapshot_position(text) if text is not None else None
            if position is not None:
                positions[topic] = position
                self.remember(topic, text)
        subscriber.positions = positions
        subscriber.ready = True

    def remember(self, topic, text):
        """Keep snapshot `text` as the topic's newest unless one as new is known."""
        known = self.latest.get(topic)
        if known is None or protocol.is_newer(text, known.text):
            payload = text.encode()
            self.latest[topic] = Held(text, text_frame(payload), len(payload))

    async def resend(self, subscriber, topic):
        """The topic's newest snapshot again, to one socket, as a fan-out
        would write it (held and conflated while the socket does not read).
        False when this process has none."""
        held = self.latest.get(topic)
        if held is None:
            return False
        if subscriber.closed:
            return True
        if subscriber.link is None:
            await subscriber.write(held.text, held.frame, held.size)
            return True
        if not self._offer(subscriber, (topic, "snapshot"), held, time.monotonic()):
            subscriber.pending[(topic, "snapshot")] = held
        return True

    @staticmethod
    def _offer(sub, key, held, now):
        """Write `held` to one ready socket with a Link unless it is backlogged
        (then it is kept, conflated, and its backlog clock runs). False when
        it must be held for a socket that is not taking frames yet."""
        if not sub.ready:
            return False
        link = sub.link
        limit = settings.WS_SEND_BUFFER_BYTES
        if sub.pending:
            if link.backlog() > limit:
                sub.pending[key] = held
                sub.backlogged(now, "send buffer full")
                return True
            sub.flush_held(skip=key)
        outcome = link.offer(held.frame, limit)
        if outcome > 0:
            sub.sent += 1
            sub.sent_bytes += held.size
            sub.backlogged_since = None
        elif outcome < 0:
            sub.pending[key] = held
            sub.backlogged(now, "send buffer full")
        return True

    def _advance(self, topic, position):
        """False for a snapshot not newer than the topic's newest within its epoch
        (a paused leader's late frame): it reaches no socket of this process."""
        if position is None or position[1] is None:
            return True
        last = self.positions.get(topic)
        if last is not None and last[0] == position[0] and position[1] <= last[1]:
            return False
        self.positions[topic] = position
        return True

    # --- frames ------------------------------------------------------------------------

    async def _receive(self, topic):
        channel = self.channels[topic]
        while running():
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the layer lost Redis; the watchdog handles the sockets
                log.warning("fan-out receive failed topic=%s: %s; retrying", topic, exc)
                await asyncio.sleep(RETRY)
                continue
            if message.get("type") != FRAME:
                continue
            try:
                await self.fan_out(topic, message)
            except Exception:
                log.exception("fan-out failed topic=%s", topic)

    async def fan_out(self, topic, message):
        if message.get("seq") is not None and not self._advance(topic, (message.get("epoch"), message["seq"])):
            log.warning("dropped a late snapshot topic=%s seq=%s", topic, message["seq"])
            return
        members = self.topics.get(topic)
        if not members:
            return
        text = message["text"]
        payload = text.encode()
        frame = text_frame(payload)
        size = message.get("bytes") or len(payload)
        kind = message.get("kind", "snapshot")
        key = (topic, kind)
        held = Held(text, frame, size)
        if kind == "snapshot":
            self.latest[topic] = held
        now = time.monotonic()
        wrote = False
        later = []
        ready, socks = [], []  # nothing queued for them: written together below
        position = (message.get("epoch"), message.get("seq"))
        for sub in list(members):
            if sub.closed:
                continue
            if not sub.ready:
                sub.pending[key] = held
                continue
            if kind == "snapshot" and sub.positions:
                known = sub.positions.get(topic)
                if known is not None:
                    if _not_after(position, known):
                        continue  # sent with its welcome
                    del sub.positions[topic]
            link = sub.link
            if link is None:
                later.append(sub)
                continue
            sock = None if sub.pending else link.ready_socket()
            if sock is not None:
                ready.append(sub)
                socks.append(sock)
                continue
            sent_before = sub.sent
            self._offer(sub, key, held, now)
            wrote = wrote or sub.sent > sent_before
        if socks:
            _send_ready(ready, socks, frame)
            for sub in ready:
                sub.sent += 1
                sub.sent_bytes += size
                sub.backlogged_since = None
            wrote = True
        for sub in later:  # no Link: the server's ASGI send, in turn
            if await sub.write(text, frame, size):
                wrote = True
        published_ms = message.get("published_ms")
        if wrote and published_ms:
            fanout.sent(keys.group_stream(topic), published_ms)

    # --- heartbeat and pings ------------------------------------------------------------

    def start(self):
        if self.tick_task is None or self.tick_task.done():
            self.tick_task = asyncio.ensure_future(self._tick_loop())

    async def _tick_loop(self):
        while running():
            await asyncio.sleep(settings.WS_HEARTBEAT_INTERVAL)
            try:
                await self.tick()
            except Exception:
                log.exception("heartbeat tick failed")

    def subscribers(self):
        """Every socket of this process once, however many topics it follows."""
        return list(dict.fromkeys(sub for group in self.topics.values() for sub in group))

    async def tick(self):
        """One heartbeat frame and one protocol ping for every socket, in
        slices of TICK_SLICE sockets: a fan-out waits for one slice at most."""
        text = protocol.heartbeat_frame()
        frame = text_frame(text.encode())
        nonce = PING_MARK + secrets.token_bytes(8)
        both = frame + ping_frame(nonce)  # one write for the heartbeat and the ping
        limit = settings.WS_SEND_BUFFER_BYTES
        members = self.subscribers()
        later = []
        pinged = False
        for start in range(0, len(members), TICK_SLICE):
            if start:
                await asyncio.sleep(0)
            now = time.monotonic()
            plain, with_ping = ([], []), ([], [])  # (subscribers, their sockets) written together
            for sub in members[start : start + TICK_SLICE]:
                if sub.closed or not sub.ready:
                    continue
                link = sub.link
                if link is None:
                    later.append(sub)
                    continue
                pinged = True
                if link.backlog() > limit:
                    sub.backlogged(now, "not reading")
                    continue
                sub.backlogged_since = None
                if sub.pending:
                    sub.flush_held()
                out, data = plain, frame
                if sub.ping_nonce is None:
                    sub.ping_nonce = nonce
                    out, data = with_ping, both
                sock = link.ready_socket()
                if sock is None:
                    link.write(data)
                else:
                    out[0].append(sub)
                    out[1].append(sock)
            _send_ready(*plain, frame)
            _send_ready(*with_ping, both)
        if pinged:
            asyncio.get_running_loop().call_later(settings.WS_HEARTBEAT_TIMEOUT, self._pongs_due, nonce)
        for sub in later:
            await sub.write(text, None, None, count=False)

    def _pongs_due(self, nonce):
        for sub in self.subscribers():
            if sub.ping_nonce != nonce or sub.closed:
                continue
            if sub.link.pong_seen(nonce):
                sub.ping_nonce = None
            else:
                sub.too_slow("no pong")


def _send_ready(subs, socks, data):
    """Write `data` to sockets that had nothing queued; what the kernel did not
    take goes to Twisted's buffer after the others got theirs."""
    if not socks:
        return
    whole = len(data)
    for sub, took in zip(subs, send_many(socks, data, settings.WS_SEND_THREADS), strict=True):
        if took < whole:
            sub.link.write_rest(data[took:])


def _not_after(position, known):
    """True when snapshot `position` (epoch, seq) is at or before `known` in the same epoch."""
    return position[1] is not None and known[1] is not None and position[0] == known[0] and position[1] <= known[1]


_hubs = PerLoop(Hub)


def hub() -> Hub:
    """The hub of this event loop (one per daphne process)."""
    return _hubs.get()
