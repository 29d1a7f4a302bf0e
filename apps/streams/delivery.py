"""Per-process fan-out: one channel-layer subscription per topic, each frame
encoded once and written to every local socket of the topic.

A topic is a channel-layer group (today one per stream, `protocol.stream_group`;
a watchlist would add one per symbol and subscribe a socket to several). The
hub holds one channel per topic it serves, joined to that group; one task per
topic receives each published frame once, frames it once
(`transport.text_frame`) and writes the same bytes to every local socket with
no task and no queue per socket (`transport.send_many`: the sockets with
nothing queued, split over WS_SEND_THREADS threads). Consumers never see
stream frames.

Slow readers: a socket whose send buffer holds more than WS_SEND_BUFFER_BYTES
gets nothing new; only the newest frame of each kind is kept for it
(conflation) and written when it catches up. Still backlogged after
WS_HEARTBEAT_TIMEOUT, or silent to a protocol ping for as long, it is closed
with 4103; the others never wait for it.

Every WS_HEARTBEAT_INTERVAL one tick sends all sockets the same `heartbeat`
frame and a protocol ping with one nonce; WS_HEARTBEAT_TIMEOUT later the
sockets that did not answer are closed.

Sockets without a daphne `Link` (other servers, the test communicator) get
the same frames through their ASGI `send`, awaited in turn.
"""

import asyncio
import logging
import secrets
import time

from channels.layers import get_channel_layer
from django.conf import settings

from stocktracker.lib.aio import PerLoop, running

from . import protocol
from .metrics import fanout
from .publish import FRAME
from .transport import ping_frame, send_many, text_frame

log = logging.getLogger("apps.streams")

RETRY = 1.0  # seconds before a failed topic receive is retried
PING_MARK = b"stk"  # our pings' payloads start with it (daphne sends its own)
TICK_SLICE = 1000  # sockets per heartbeat slice (~20 ms of writes)


class Held:
    """A frame kept for a socket that is not taking frames yet (or not reading)."""

    __slots__ = ("frame", "size", "text")

    def __init__(self, text, frame, size):
        self.text, self.frame, self.size = text, frame, size


class Hub:
    def __init__(self):
        self.layer = get_channel_layer()
        self.topics = {}  # topic -> set of consumers
        self.channels = {}  # topic -> this process's channel in that group
        self.receivers = {}  # topic -> receive task
        self.positions = {}  # topic -> (epoch, seq) of the newest snapshot written
        self.lock = asyncio.Lock()
        self.tick_task = None

    # --- membership ----------------------------------------------------------------

    async def join(self, consumer, topic):
        """Subscribe `consumer` to `topic`; frames are held for it until `ready()`.
        Raises what the channel layer raises when the topic is new to this process."""
        consumer.ready = False
        if topic not in self.channels:
            async with self.lock:
                if topic not in self.channels:
                    channel = await self.layer.new_channel("stk-hub.")
                    await self.layer.group_add(topic, channel)
                    self.channels[topic] = channel
        task = self.receivers.get(topic)
        if task is None or task.done():
            self.receivers[topic] = asyncio.ensure_future(self._receive(topic))
        self.topics.setdefault(topic, set()).add(consumer)
        self.start()

    def leave(self, consumer):
        for topic in getattr(consumer, "topics", ()):
            members = self.topics.get(topic)
            if members is not None:
                members.discard(consumer)

    async def ready(self, consumer, latest=None):
        """The consumer sent `welcome` and `latest`: write what was held for it
        meanwhile (unless `latest` already is as new), then stream."""
        while consumer.pending and not consumer.closing:
            held, consumer.pending = consumer.pending, {}
            for kind, item in held.items():
                if kind == "snapshot" and latest is not None and not protocol.is_newer(item.text, latest):
                    continue
                await consumer.write(item.text, item.frame, item.size)
        # What this socket already has: a frame at or before it is not written
        # to it again. Per socket, not per topic: the topic's own frame at that
        # position may still be on its way to the process, and the other
        # sockets need it.
        consumer.has_position = protocol.snapshot_position(latest) if latest is not None else None
        consumer.ready = True

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
        limit = settings.WS_SEND_BUFFER_BYTES
        now = time.monotonic()
        wrote = False
        later = []
        ready, socks = [], []  # nothing queued for them: written together below
        position = (message.get("epoch"), message.get("seq"))
        for consumer in list(members):
            if consumer.closing:
                continue
            if not consumer.ready:
                consumer.pending[kind] = Held(text, frame, size)
                continue
            if consumer.has_position is not None and kind == "snapshot":
                if _not_after(position, consumer.has_position):
                    continue  # sent with its welcome
                consumer.has_position = None
            link = consumer.link
            if link is None:
                later.append(consumer)
                continue
            if consumer.pending:
                if link.backlog() > limit:
                    consumer.pending[kind] = Held(text, frame, size)
                    self._backlogged(consumer, now, "send buffer full")
                    continue
                self._flush_held(consumer, kind)
            sock = link.ready_socket()
            if sock is not None:
                ready.append(consumer)
                socks.append(sock)
                continue
            outcome = link.offer(frame, limit)
            if outcome > 0:
                consumer.sent += 1
                consumer.sent_bytes += size
                consumer.backlogged_since = None
                wrote = True
            elif outcome < 0:
                consumer.pending[kind] = Held(text, frame, size)
                self._backlogged(consumer, now, "send buffer full")
        if socks:
            _send_ready(ready, socks, frame)
            for consumer in ready:
                consumer.sent += 1
                consumer.sent_bytes += size
                consumer.backlogged_since = None
            wrote = True
        for consumer in later:  # no Link: the server's ASGI send, in turn
            if not consumer.closing:
                await consumer.write(text, frame, size)
                wrote = True
        published_ms = message.get("published_ms")
        if wrote and published_ms:
            fanout.sent(topic_stream(topic), published_ms)

    @staticmethod
    def _flush_held(consumer, kind):
        held, consumer.pending = consumer.pending, {}
        for held_kind, item in held.items():
            if held_kind != kind and consumer.link.write(item.frame):
                consumer.sent += 1
                consumer.sent_bytes += item.size

    @staticmethod
    def _backlogged(consumer, now, why):
        if consumer.backlogged_since is None:
            consumer.backlogged_since = now
        elif now - consumer.backlogged_since > settings.WS_HEARTBEAT_TIMEOUT:
            consumer.too_slow(why)

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

    async def tick(self):
        """One heartbeat frame and one protocol ping for every socket, in
        slices of TICK_SLICE sockets: a fan-out waits for one slice at most."""
        text = protocol.heartbeat_frame()
        frame = text_frame(text.encode())
        nonce = PING_MARK + secrets.token_bytes(8)
        both = frame + ping_frame(nonce)  # one write for the heartbeat and the ping
        limit = settings.WS_SEND_BUFFER_BYTES
        # Once per socket, however many topics it follows.
        members = list(dict.fromkeys(consumer for group in self.topics.values() for consumer in group))
        later = []
        pinged = False
        for start in range(0, len(members), TICK_SLICE):
            if start:
                await asyncio.sleep(0)
            now = time.monotonic()
            plain, with_ping = ([], []), ([], [])  # (consumers, their sockets) written together
            for consumer in members[start : start + TICK_SLICE]:
                if consumer.closing or not consumer.ready:
                    continue
                link = consumer.link
                if link is None:
                    later.append(consumer)
                    continue
                pinged = True
                if link.backlog() > limit:
                    self._backlogged(consumer, now, "not reading")
                    continue
                consumer.backlogged_since = None
                if consumer.pending:
                    self._flush_held(consumer, None)
                out, data = plain, frame
                if consumer.ping_nonce is None:
                    consumer.ping_nonce = nonce
                    out, data = with_ping, both
                sock = link.ready_socket()
                if sock is None:
                    link.write(data)
                else:
                    out[0].append(consumer)
                    out[1].append(sock)
            _send_ready(*plain, frame)
            _send_ready(*with_ping, both)
        if pinged:
            asyncio.get_running_loop().call_later(settings.WS_HEARTBEAT_TIMEOUT, self._pongs_due, nonce)
        for consumer in later:
            if not consumer.closing:
                await consumer.write(text, None, None, count=False)

    def _pongs_due(self, nonce):
        for members in self.topics.values():
            for consumer in list(members):
                if consumer.ping_nonce != nonce or consumer.closing:
                    continue
                if consumer.link.pong_seen(nonce):
                    consumer.ping_nonce = None
                else:
                    consumer.too_slow("no pong")


def _send_ready(consumers, socks, data):
    """Write `data` to sockets that had nothing queued; what the kernel did not
    take goes to Twisted's buffer after the others got theirs."""
    if not socks:
        return
    whole = len(data)
    for consumer, took in zip(consumers, send_many(socks, data, settings.WS_SEND_THREADS), strict=True):
        if took < whole:
            consumer.link.write_rest(data[took:])


def _not_after(position, known):
    """True when snapshot `position` (epoch, seq) is at or before `known` in the same epoch."""
    return position[1] is not None and known[1] is not None and position[0] == known[0] and position[1] <= known[1]


def topic_stream(topic):
    return topic.split(".", 1)[1] if topic.startswith("stream.") else topic


_hubs = PerLoop(Hub)


def hub() -> Hub:
    """The hub of this event loop (one per daphne process)."""
    return _hubs.get()
