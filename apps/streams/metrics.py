"""Prometheus metrics for the web processes and the feed worker.

Multi-process: with PROMETHEUS_MULTIPROC_DIR set (before start-up), every
process (each daphne, each runworker on the machine) writes its values to
memory-mapped files in that directory and `/metrics`, served by any one
process, adds them all up (prometheus_client's multiprocess mode). Scrape
every web machine; run the workers on machines whose web processes share
their directory, or their feed metrics have nobody to serve them. Without it
(embedded mode, one process) the default in-process registry is used.

Cost per delivered message: none here. Sockets count `sent` / `sent_bytes`
on themselves; `apps.streams.accounting` folds those into the counters below
every few seconds (and at disconnect), and `FanoutClock` observes the
publish-to-send delay once per frame per process, not once per socket.
"""

import atexit
import glob
import os
import time

from prometheus_client import REGISTRY as _DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)  # before the first metric opens its file

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

# --- feed worker ----------------------------------------------------------------

PUBLISHED = Counter("stocktracker_messages_published_total", "Frames published to the channel layer.", ["stream"])
PUBLISHED_BYTES = Counter("stocktracker_bytes_published_total", "Bytes of frames published.", ["stream"])
SSI_REQUESTS = Counter(
    "stocktracker_ssi_requests_total", "SSI FastConnect requests (each attempt).", ["endpoint", "outcome"]
)
SSI_LATENCY = Histogram(
    "stocktracker_ssi_request_seconds",
    "SSI FastConnect request latency (each attempt).",
    ["endpoint"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
HUB_MESSAGES = Counter(
    "stocktracker_ssi_hub_messages_total", "Messages received from the SSI streaming hub, by data type.", ["type"]
)
HUB_ERRORS = Counter(
    "stocktracker_ssi_hub_errors_total",
    "SSI streaming hub problems: Error calls, failed invocations, malformed frames.",
    ["kind"],
)
HUB_RECONNECTS = Counter(
    "stocktracker_ssi_hub_reconnects_total", "SSI streaming hub connections lost or rotated, by reason.", ["reason"]
)
FEED_STATE = Gauge(
    "stocktracker_feed_state",
    "1 for the feed's current state (live, closed, stale, down).",
    ["state"],
    multiprocess_mode="livemax",
)
FEED_LEADER = Gauge(
    "stocktracker_feed_leader", "1 while this process holds the feed leader lock.", multiprocess_mode="livesum"
)
CYCLE = Histogram(
    "stocktracker_feed_cycle_seconds",
    "Duration of one feed cycle on the leader.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
FEED_STATES = ("live", "closed", "stale", "down")


def set_feed_state(name):
    for state in FEED_STATES:
        FEED_STATE.labels(state).set(1 if state == name else 0)


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


def exposition():
    """The metrics of every process on this machine (multiprocess mode) or of this one."""
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(_DEFAULT_REGISTRY)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _setup_multiprocess():
    # Live gauges of processes that died without cleaning up (kill -9, OOM)
    # would count forever: drop them when the next process starts.
    for path in glob.glob(os.path.join(MULTIPROC_DIR, "gauge_live*_*.db")):
        try:
            pid = int(os.path.basename(path).rsplit("_", 1)[1].split(".")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            multiprocess.mark_process_dead(pid, MULTIPROC_DIR)
    # On a clean exit this process's live gauges (open sockets, leader) stop counting.
    atexit.register(multiprocess.mark_process_dead, os.getpid(), MULTIPROC_DIR)


if MULTIPROC_DIR:
    _setup_multiprocess()
