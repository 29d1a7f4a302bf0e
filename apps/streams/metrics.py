"""Prometheus metrics of the web processes (collected by `stocktracker.lib.metrics`).

Cost per delivered message: none here. Sockets count what they were sent;
`apps.streams.accounting` folds those into the counters below every few
seconds (and at disconnect), and `FanoutClock` observes the publish-to-send
delay once per frame per process, not once per socket.
"""

import time

from prometheus_client import Counter, Gauge, Histogram

from stocktracker.lib import metrics as _collected  # noqa: F401 - multiprocess files set up first

# --- web processes ------------------------------------------------------------

CONNECTIONS = Gauge("stocktracker_ws_connections", "Open, streaming sockets.", ["stream"], multiprocess_mode="livesum")
CONNECTS = Counter("stocktracker_ws_connects_total", "Sockets that started streaming.", ["stream"])
REJECTIONS = Counter(
    "stocktracker_ws_rejections_total", "Sockets refused before streaming, by close code.", ["stream", "code"]
)
DISCONNECTS = Counter(
    "stocktracker_ws_disconnects_total", "Streaming sockets closed (by either side), by close code.", ["stream", "code"]
)
DELIVERED = Counter("stocktracker_messages_delivered_total", "Frames written to sockets.", ["stream"])
DELIVERED_BYTES = Counter("stocktracker_bytes_delivered_total", "Bytes of frames written to sockets.", ["stream"])
SEND_DELAY = Histogram(
    "stocktracker_publish_to_send_seconds",
    "From a snapshot's published_ms to its write to the last local socket (per frame per process).",
    ["stream"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
USAGE_FLUSHES = Counter("stocktracker_usage_flushes_total", "Token usage batches written.", ["outcome"])

# --- the publish helper (runs in the feed worker) ---------------------------

PUBLISHED = Counter("stocktracker_messages_published_total", "Frames published to the channel layer.", ["stream"])
PUBLISHED_BYTES = Counter("stocktracker_bytes_published_total", "Bytes of frames published.", ["stream"])


class FanoutClock:
    """Publish-to-send delay, observed once per frame per process.

    Every socket that writes a snapshot reports (stream, published_ms); the
    clock keeps the time of the latest write of the current frame and
    observes `last write - published` when the next frame of that stream
    arrives (or when `settle()` finds it idle), i.e. the delay to the last
    local socket. Per call: one clock read and a comparison.
    """

    __slots__ = ("frames",)

    def __init__(self):
        self.frames = {}  # stream -> [published_ms, last write (epoch s)]

    def sent(self, stream, published_ms):
        now = time.time()
        current = self.frames.get(stream)
        if current is not None:
            if current[0] == published_ms:
                current[1] = now
                return
            if published_ms < current[0]:
                return  # a late writer of an older frame
            SEND_DELAY.labels(stream).observe(max(0.0, current[1] - current[0] / 1000))
        self.frames[stream] = [published_ms, now]

    def settle(self, idle_s=0.5):
        """Observe frames whose fan-out ended more than `idle_s` ago."""
        now = time.time()
        for stream, (published_ms, last) in list(self.frames.items()):
            if now - last >= idle_s:
                SEND_DELAY.labels(stream).observe(max(0.0, last - published_ms / 1000))
                del self.frames[stream]


fanout = FanoutClock()
