"""The one way into the sockets: serialize once, store as latest, group_send.

Consumers forward the `text` of these messages unchanged, so a frame is
encoded once per update however many clients receive it.
"""

from channels.layers import get_channel_layer

from stocktracker.lib import catalogue, keys
from stocktracker.lib.state import Fenced, get_state

from . import metrics, protocol

__all__ = ["Fenced", "publish_feed_state", "publish_snapshot", "publish_topic", "wake_feed"]

FRAME = "stream.frame"  # consumer handler: stream_frame
# `kind` ("snapshot" | "feed") lets a consumer keep only the newest frame of
# each kind for a client that is not reading (conflation), without parsing.
# `published_ms` (the frame's own) and `bytes` (its UTF-8 size) ride along so
# that the sockets count delivery and delay without parsing or encoding.


async def publish_snapshot(stream, data, *, day, source_ms, feed="live", simulated=False, fence=None, floor=None):
    """Publish one complete snapshot of `stream` for trading `day`
    (YYYY-MM-DD); returns its position (epoch, seq).

    `fence` is the publisher's leader term, (lock key, token): numbering and
    storing happen only while Redis still holds that token, else `Fenced` is
    raised and nothing is sent. `floor`: the position this publisher last
    published (see `state.frames`). The frame carries its (epoch, seq) so
    sockets drop a frame that is not newer than the last one they forwarded
    (one sent by a leader that was paused between storing it and sending it)."""
    if stream not in catalogue.STREAMS:
        raise ValueError(f"unknown stream {stream!r}")
    published_ms = protocol.now_ms()
    parts = protocol.snapshot_frame_parts(
        stream,
        published_ms=published_ms,
        source_ms=source_ms,
        feed=feed,
        data=data,
        simulated=simulated,
    )
    epoch, seq, text = await get_state().latest_publish(stream, day, parts, fence, floor)
    size = len(text.encode())
    message = {
        "type": FRAME,
        "kind": "snapshot",
        "text": text,
        "published_ms": published_ms,
        "bytes": size,
        "epoch": epoch,
        "seq": seq,
    }
    await get_channel_layer().group_send(keys.stream_group(stream), message)
    metrics.PUBLISHED.labels(stream).inc()
    metrics.PUBLISHED_BYTES.labels(stream).inc(size)
    return epoch, seq


async def publish_topic(
    topic, snapshot, delta, *, day, source_ms, feed="live", simulated=False, fence=None, floor=None
):
    """Publish one update of `topic`: its complete `snapshot` data and the
    `delta` from the snapshot this publisher published before it (None when
    there is none to diff against: a first publish). Each is serialized once;
    the state numbers them, stores the snapshot and keeps the delta for
    resume; sockets get the delta (or, when the state started a new epoch,
    the snapshot). Returns the position (epoch, seq). `fence` and `floor` as
    for `publish_snapshot`."""
    published_ms = protocol.now_ms()
    fields = {"published_ms": published_ms, "source_ms": source_ms, "feed": feed, "simulated": simulated}
    snapshot_parts = protocol.topic_frame_parts(topic, delta=False, data=snapshot, **fields)
    delta_parts = protocol.topic_frame_parts(topic, delta=True, data=delta, **fields) if delta is not None else None
    epoch, seq, snapshot_text, delta_text = await get_state().topic_publish(
        topic, day, snapshot_parts, delta_parts, fence, floor
    )
    kind, text = ("delta", delta_text) if delta_text is not None else ("snapshot", snapshot_text)
    size = len(text.encode())
    message = {
        "type": FRAME,
        "kind": kind,
        "topic": topic,
        "text": text,
        "published_ms": published_ms,
        "bytes": size,
        "epoch": epoch,
        "seq": seq,
    }
    await get_channel_layer().group_send(keys.topic_group(topic), message)
    metrics.PUBLISHED.labels(_family(topic)).inc()
    metrics.PUBLISHED_BYTES.labels(_family(topic)).inc(size)
    return epoch, seq


def _family(topic):
    # A metric label per family, not per topic: 1,600 quote topics would be 1,600 series.
    return "topic:" + topic.partition(":")[0]


async def publish_feed_state(state_name, *, detail="", simulated=False, fence=None):
    """Tell every socket that the feed changed state (live, stale, down, closed).

    `fence` as for `publish_snapshot`: the state is stored only while Redis
    still holds the publisher's leader token, else `Fenced` is raised and
    nothing is sent."""
    since_ms = protocol.now_ms()
    record = {"state": state_name, "since_ms": since_ms, "detail": detail, "simulated": simulated}
    await get_state().feed_set(record, fence)
    text = protocol.feed_frame(state_name, since_ms=since_ms, detail=detail, simulated=simulated)
    layer = get_channel_layer()
    size = len(text.encode())
    for stream in catalogue.STREAMS:
        message = {"type": FRAME, "kind": "feed", "text": text, "bytes": size}
        await layer.group_send(keys.stream_group(stream), message)
        metrics.PUBLISHED.labels(stream).inc()
        metrics.PUBLISHED_BYTES.labels(stream).inc(size)


async def wake_feed():
    """Nudge an idle feed worker. Best effort: with no worker listening, the
    nudge reaches nobody."""
    layer = get_channel_layer()
    if layer is None:
        return
    await layer.send(keys.WAKE_CHANNEL, {"type": "feed.wake"})
