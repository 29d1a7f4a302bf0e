"""Latest snapshots for pages and polls, and the "viewer" leases that wake the feed.

The feed works only for streams with subscribers (leases under
`keys.subscribers(stream)`), and builds topics only while something follows
one (`keys.TOPIC_SUBSCRIBERS`). A page view or a snapshot poll is a
subscriber for a short while, so it takes a lease; if a stream or topic has
no snapshot yet it also nudges the feed and waits briefly for one, so the
first answer shows data rather than "waiting".
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


async def topic_text(member, topic, wait=None):
    """The stored snapshot of `topic`, after taking a viewer lease on the
    topics; None when the feed has none yet. Raises StateUnavailable."""
    wait = FIRST_WAIT if wait is None else wait
    state = get_state()
    await get_state().lease_acquire(keys.viewer(member), [(keys.TOPIC_SUBSCRIBERS, None)], VIEWER_TTL)
    text = await state.topic_snapshot(topic)
    if text is None or now_ms() - published_ms(text) > WAKE_IF_OLDER_MS:
        await wake_feed()
    deadline = time.monotonic() + wait
    while text is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        text = await state.topic_snapshot(topic)
    return text


UNIVERSE_EVERY_S = 60.0  # how long a process trusts its copy of the universe's names
_names = {"at": -UNIVERSE_EVERY_S, "day": None, "symbols": None, "indices": None}


async def topic_exists(topic):
    """False for a `quote:` or `index:` topic of a symbol or index that today's
    universe (as the feed stored it) does not list; True for the rest, and
    while no universe is stored (the feed will say)."""
    if topic.family not in (catalogue.QUOTE, catalogue.INDEX_TOPIC):
        return True
    now = time.monotonic()
    if now - _names["at"] >= UNIVERSE_EVERY_S:
        raw = await get_state().value_get(keys.UNIVERSE)
        _names["at"] = now
        if raw:
            try:
                universe = json.loads(raw)
                _names["symbols"] = {item["symbol"] for item in universe["instruments"]}
                _names["indices"] = {item["code"] for item in universe["indices"]}
            except (ValueError, KeyError, TypeError):
                _names["symbols"] = _names["indices"] = None
    names = _names["symbols"] if topic.family == catalogue.QUOTE else _names["indices"]
    return names is None or topic.arg in names
