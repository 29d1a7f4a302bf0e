"""Latest snapshots for pages and polls, and the "viewer" leases that wake the feed.

The feed works only for streams with subscribers (leases under
`keys.subscribers(stream)`).
A page view or a snapshot poll is a subscriber for a short while, so it takes
a lease; if a stream has no latest frame yet it also nudges the feed and waits
briefly for one, so the first page shows data rather than "waiting".
"""

import asyncio
import json
import time

from stocktracker.lib import catalogue, keys
from stocktracker.lib.state import get_state

from .protocol import now_ms
from .publish import wake_feed

VIEWER_TTL = 30.0  # seconds a page view or poll keeps a stream "subscribed"
FIRST_WAIT = 2.0  # seconds to wait for a first frame when none exists
WAKE_IF_OLDER_MS = 10_000  # an older latest means the feed idles: nudge it


async def take_viewer_lease(member, streams, ttl=VIEWER_TTL):
    await get_state().lease_acquire(keys.viewer(member), [(keys.subscribers(s), None) for s in streams], ttl)


def published_ms(text):
    try:
        return int(json.loads(text).get("published_ms") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0


async def latest_texts(member, streams=catalogue.STREAMS, wait=FIRST_WAIT):
    """{stream: latest frame text or None} after taking a viewer lease.
    Raises StateUnavailable when Redis is down."""
    state = get_state()
    await take_viewer_lease(member, streams)
    texts = dict(zip(streams, await asyncio.gather(*(state.latest_get(s) for s in streams)), strict=True))
    idle = [s for s, t in texts.items() if t is None or now_ms() - published_ms(t) > WAKE_IF_OLDER_MS]
    if idle:
        await wake_feed()
    deadline = time.monotonic() + wait
    while any(t is None for t in texts.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        missing = [s for s, t in texts.items() if t is None]
        for stream, text in zip(missing, await asyncio.gather(*(state.latest_get(s) for s in missing)), strict=True):
            texts[stream] = text
    return texts
