"""Prometheus metrics of the feed worker (collected by `stocktracker.lib.metrics`)."""

from prometheus_client import Counter, Gauge, Histogram

from stocktracker.lib import metrics as _collected  # noqa: F401 - multiprocess files set up first

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
