"""State shared by every process, by domain:

- `frames`: latest frames, sequence numbers and the feed state;
- `leases`: connection leases and the entries that ride on them;
- `counters`: generations, claims, windowed counters, values set once;
- `topics`: each topic's snapshot, position and window of recent deltas.

Production keeps it in Redis so it holds across processes and machines;
embedded mode keeps it in this process. Each domain has its Memory and its
Redis form side by side, with the same async API; `get_state()` returns the
right one for the current event loop. Names come from `stocktracker.lib.keys`.
"""

from django.conf import settings

from ..aio import PerLoop
from .base import REDIS_POOL_SIZE, Fenced, MemoryBase, RedisBase, StateUnavailable
from .counters import MemoryCounters, RedisCounters
from .frames import MemoryFrames, RedisFrames
from .leases import MemoryLeases, RedisLeases
from .topics import MemoryTopics, RedisTopics

__all__ = ["REDIS_POOL_SIZE", "Fenced", "MemoryState", "RedisState", "StateUnavailable", "get_state", "reset_state"]


class MemoryState(MemoryFrames, MemoryTopics, MemoryLeases, MemoryCounters, MemoryBase):
    """In-process state for embedded mode (one process, no Redis)."""


class RedisState(RedisFrames, RedisTopics, RedisLeases, RedisCounters, RedisBase):
    """Shared state in Redis (production)."""


_memory = None
_redis_states = PerLoop(lambda: RedisState(settings.REDIS_URL))


def get_state():
    """The shared state for this process (Redis state is per event loop:
    redis.asyncio connections cannot cross loops)."""
    global _memory
    if not settings.REDIS_URL:
        if _memory is None:
            _memory = MemoryState()
        return _memory
    return _redis_states.get()


def reset_state():
    """Forget process-local state (tests)."""
    global _memory
    _memory = None
    _redis_states.clear()
