"""Latest frames, their positions and the feed state.

A publish numbers a frame and stores it as the stream's latest in one step,
fenced by the publisher's leader lock: a leader paused past its lock's TTL
publishes nothing, and the latest frame is always the highest seq of its
epoch.

A position is (epoch, seq). The epoch is the trading day and the
incarnation of the stream's counter: a counter that was lost (Redis
restarted without its data, a flush, a replica that never had it) starts a
new incarnation, so a position can never move backwards without its epoch
changing. A counter that lags (a failover to a replica that missed the last
writes) is raised to the publisher's floor: the last seq it published in
that epoch.
"""

import json
import secrets
import time

from .. import keys
from .base import Fenced

EPOCH_SEP = "~"  # between an epoch's trading date and its incarnation


def epoch_of(day, incarnation):
    """A stream's epoch: the trading date, then the incarnation of its
    counter, e.g. 2026-11-27~3f9a1c."""
    return f"{day}{EPOCH_SEP}{incarnation}"


def epoch_day(epoch):
    """The trading date of an epoch ("2026-11-27" for "2026-11-27~3f9a1c")."""
    return epoch.partition(EPOCH_SEP)[0]


def new_incarnation():
    return secrets.token_hex(3)


def counter_step(day, incarnation, last_epoch, last_seq):
    """Lua that takes the next position of the counter hash KEYS[1]: sets
    `epoch`, `seq`, and `fresh` (true when the epoch is new, or the counter
    was raised to the caller's floor: nothing before `seq` carries over).
    The arguments are Lua expressions (ARGV[n])."""
    return f"""
local fresh = false
local inc = redis.call('HGET', KEYS[1], 'inc')
if not inc then
  inc = {incarnation}
  redis.call('HSET', KEYS[1], 'inc', inc, 'day', {day}, 'seq', 0)
  fresh = true
end
if redis.call('HGET', KEYS[1], 'day') ~= {day} then
  redis.call('HSET', KEYS[1], 'day', {day}, 'seq', 0)
  fresh = true
end
local epoch = {day} .. '{EPOCH_SEP}' .. inc
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local floor = tonumber({last_seq})
if epoch == {last_epoch} and seq <= floor then
  seq = floor + 1
  redis.call('HSET', KEYS[1], 'seq', seq)
  fresh = true
end
"""


# KEYS: [counter hash, latest key, fence key]; ARGV: day, frame head, mid,
# tail, fence token ('' = unfenced), a new incarnation (used if the counter
# is gone), the caller's last epoch ('' = none) and its last seq there.
# Returns {seq, epoch}, or {-1, ''} when fenced.
_PUBLISH = (
    """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then
  return {-1, ''}
end
"""
    + counter_step("ARGV[1]", "ARGV[6]", "ARGV[7]", "ARGV[8]")
    + """
redis.call('SET', KEYS[2], ARGV[2] .. epoch .. ARGV[3] .. seq .. ARGV[4])
return {seq, epoch}
"""
)

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
        self._incarnation = new_incarnation()  # a restarted process has lost its counters
        self._feed = None

    async def latest_get(self, stream):
        return self._latest.get(stream)

    async def latest_publish(self, stream, day, parts, fence=None, floor=None):
        """Number and store a snapshot (`parts`: head, mid, tail around its
        epoch and seq); returns (epoch, seq, text). One process: no other
        leader to fence out, and no counter that lags."""
        epoch = epoch_of(day, self._incarnation)
        last_epoch, seq = self._seq.get(stream, (None, 0))
        seq = seq + 1 if last_epoch == epoch else 1
        self._seq[stream] = (epoch, seq)
        head, mid, tail = parts
        text = f"{head}{epoch}{mid}{seq}{tail}"
        self._latest[stream] = text
        return epoch, seq, text

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

    async def latest_publish(self, stream, day, parts, fence=None, floor=None):
        """Number and store a snapshot (`parts`: head, mid, tail around its
        epoch and seq) in one script; returns (epoch, seq, text). `fence` is
        (lock key, token): raises Fenced when the lock is no longer the
        caller's. `floor`: the caller's last (epoch, seq) of this stream;
        within that epoch the seq never goes below it."""
        key, token = fence if fence else ("", "")
        last_epoch, last_seq = floor or ("", 0)
        head, mid, tail = parts
        script_keys = [keys.seq(stream), keys.latest(stream), key or keys.UNFENCED]
        args = [day, head, mid, tail, token or "", new_incarnation(), last_epoch, last_seq]
        seq, epoch = await self._call(self.script(_PUBLISH)(keys=script_keys, args=args))
        if int(seq) < 0:
            raise Fenced(f"{key} is no longer held by this process")
        return epoch, int(seq), f"{head}{epoch}{mid}{seq}{tail}"

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
