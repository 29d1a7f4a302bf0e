"""Latest frames, their sequence numbers and the feed state.

A publish numbers a frame and stores it as the stream's latest in one step,
fenced by the publisher's leader lock: a leader paused past its lock's TTL
publishes nothing, and the latest frame is always the highest seq of its
epoch.
"""

import json
import time

from .. import keys
from .base import Fenced

# KEYS: [seq hash, latest key, fence key]; ARGV: epoch, frame head, frame
# tail, fence token ('' = unfenced). Returns the seq, or -1 when fenced.
_PUBLISH = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then
  return -1
end
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', 0)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('SET', KEYS[2], ARGV[2] .. seq .. ARGV[3])
return seq
"""

# KEYS: [feed key, fence key]; ARGV: feed record, fence token ('' = unfenced).
# Returns 0 when fenced (nothing written), else 1.
_FEED_SET = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class MemoryFrames:
    def __init__(self):
        super().__init__()
        self._latest = {}
        self._seq = {}
        self._feed = None

    async def latest_get(self, stream):
        return self._latest.get(stream)

    async def latest_publish(self, stream, epoch, head, tail, fence=None):
        """Number and store a snapshot (head + seq + tail); returns (seq, text).
        One process: no other leader to fence out."""
        last_epoch, seq = self._seq.get(stream, (None, 0))
        seq = seq + 1 if last_epoch == epoch else 1
        self._seq[stream] = (epoch, seq)
        text = f"{head}{seq}{tail}"
        self._latest[stream] = text
        return seq, text

    async def feed_get(self):
        return self._feed

    async def feed_set(self, state: dict, fence=None):
        """Store the feed state; one process: no other leader to fence out."""
        self._feed = {**(self._feed or {}), **state}

    async def feed_touch(self):
        """Record that the feed loop is alive (readiness reads its age)."""
        self._feed = {**(self._feed or {}), "heartbeat_ms": int(time.time() * 1000)}


class RedisFrames:
    async def latest_get(self, stream):
        return await self._call(self.redis.get(keys.latest(stream)))

    async def latest_publish(self, stream, epoch, head, tail, fence=None):
        """Number and store a snapshot (head + seq + tail) in one script;
        returns (seq, text). `fence` is (lock key, token): raises Fenced when
        the lock is no longer the caller's."""
        key, token = fence if fence else ("", "")
        script_keys = [keys.seq(stream), keys.latest(stream), key or keys.UNFENCED]
        seq = int(await self._call(self.script(_PUBLISH)(keys=script_keys, args=[epoch, head, tail, token or ""])))
        if seq < 0:
            raise Fenced(f"{key} is no longer held by this process")
        return seq, f"{head}{seq}{tail}"

    async def feed_get(self):
        raw, heartbeat = await self._call(self.redis.mget(keys.FEED, keys.FEED_HEARTBEAT))
        if not raw and not heartbeat:
            return None
        feed = json.loads(raw) if raw else {}
        if heartbeat:
            feed["heartbeat_ms"] = int(heartbeat)
        return feed

    async def feed_set(self, state: dict, fence=None):
        """Store the feed state. `fence` is (lock key, token), as for
        `latest_publish`: raises Fenced when the lock is no longer the caller's."""
        key, token = fence if fence else ("", "")
        script_keys = [keys.FEED, key or keys.UNFENCED]
        if not int(await self._call(self.script(_FEED_SET)(keys=script_keys, args=[json.dumps(state), token or ""]))):
            raise Fenced(f"{key} is no longer held by this process")

    async def feed_touch(self):
        """Record that the feed loop is alive (readiness reads its age)."""
        await self._call(self.redis.set(keys.FEED_HEARTBEAT, int(time.time() * 1000), ex=3600))
