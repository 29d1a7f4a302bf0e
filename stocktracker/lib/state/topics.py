"""Topics: each one's complete snapshot, its position and a window of its
recent deltas (to send a client only what it missed).

A publish numbers the delta, stores the snapshot at the same seq and appends
the delta to the window, in one step, fenced and floored like a stream's
frames (`frames`). The first publish of an epoch (a new day, or a counter
that was lost) has no delta: the window starts empty. A counter raised to the
publisher's floor (a failover to a replica that missed writes) empties the
window too: deltas of the gap are gone, so nothing may be resumed across it.

Frames are given as their text cut around the positions the store fills in:
a snapshot as (head, mid, tail) around epoch and seq, a delta as (head, mid,
mid2, tail) around epoch, seq and prev.
"""

import collections

from .. import keys
from .base import Fenced
from .frames import counter_step, epoch_of, new_incarnation

DELTA_WINDOW = 600  # deltas kept per topic: 10 minutes at one a second

# KEYS: [counter hash, snapshot key, deltas list, fence key]; ARGV: day, the
# snapshot's head, mid, tail, the delta's head, mid, mid2, tail ('' = no delta
# given), fence token, new incarnation, the caller's last epoch, its last seq,
# window size. Returns {seq, epoch, delta written (0/1)}, or {-1, '', 0} when fenced.
_PUBLISH = (
    """
if ARGV[9] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[9] then
  return {-1, '', 0}
end
"""
    + counter_step("ARGV[1]", "ARGV[10]", "ARGV[11]", "ARGV[12]")
    + """
redis.call('SET', KEYS[2], ARGV[2] .. epoch .. ARGV[3] .. seq .. ARGV[4])
if fresh or ARGV[5] == '' or seq == 1 then
  redis.call('DEL', KEYS[3])
  return {seq, epoch, 0}
end
redis.call('RPUSH', KEYS[3], ARGV[5] .. epoch .. ARGV[6] .. seq .. ARGV[7] .. (seq - 1) .. ARGV[8])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[13]), -1)
return {seq, epoch, 1}
"""
)


def _text(parts, epoch, seq, prev=None):
    if prev is None:
        head, mid, tail = parts
        return f"{head}{epoch}{mid}{seq}{tail}"
    head, mid, mid2, tail = parts
    return f"{head}{epoch}{mid}{seq}{mid2}{prev}{tail}"


class MemoryTopics:
    def __init__(self):
        super().__init__()
        self._topics = {}  # topic -> [epoch, seq, snapshot text, deque of delta texts]
        self._topic_incarnation = new_incarnation()

    async def topic_publish(self, topic, day, snapshot, delta=None, fence=None, floor=None, window=DELTA_WINDOW):
        """Store the snapshot of `topic` and append its delta; returns (epoch,
        seq, snapshot text, delta text or None). One process: nothing to fence."""
        epoch = epoch_of(day, self._topic_incarnation)
        found = self._topics.get(topic)
        if found is None or found[0] != epoch:
            found = self._topics[topic] = [epoch, 0, None, collections.deque(maxlen=window)]
            delta = None  # the first frame of an epoch is its snapshot
        found[1] += 1
        seq = found[1]
        found[2] = _text(snapshot, epoch, seq)
        delta_text = None
        if delta is not None and seq > 1:
            delta_text = _text(delta, epoch, seq, seq - 1)
            found[3].append(delta_text)
        else:
            found[3].clear()
        return epoch, seq, found[2], delta_text

    async def topic_snapshot(self, topic):
        found = self._topics.get(topic)
        return found[2] if found else None

    async def topic_window(self, topic):
        """The deltas kept for `topic`, oldest first."""
        found = self._topics.get(topic)
        return list(found[3]) if found else []


class RedisTopics:
    async def topic_publish(self, topic, day, snapshot, delta=None, fence=None, floor=None, window=DELTA_WINDOW):
        """As MemoryTopics.topic_publish, for every process at once (one script).
        `fence` is (lock key, token): raises Fenced when the lock is no longer
        the caller's. `floor`: the caller's last (epoch, seq) of this topic."""
        key, token = fence if fence else ("", "")
        last_epoch, last_seq = floor or ("", 0)
        delta_parts = delta or ("", "", "", "")
        script_keys = [keys.topic_seq(topic), keys.topic_latest(topic), keys.topic_deltas(topic), key or keys.UNFENCED]
        args = [day, *snapshot, *delta_parts, token or "", new_incarnation(), last_epoch, last_seq, window]
        seq, epoch, wrote = await self._call(self.script(_PUBLISH)(keys=script_keys, args=args))
        seq = int(seq)
        if seq < 0:
            raise Fenced(f"{key} is no longer held by this process")
        delta_text = _text(delta, epoch, seq, seq - 1) if int(wrote) else None
        return epoch, seq, _text(snapshot, epoch, seq), delta_text

    async def topic_snapshot(self, topic):
        return await self._call(self.redis.get(keys.topic_latest(topic)))

    async def topic_window(self, topic):
        """The deltas kept for `topic`, oldest first."""
        return await self._call(self.redis.lrange(keys.topic_deltas(topic), 0, -1))
