"""A lock with a time to live, held by one process at a time, and the token
that proves a term of it (a fencing token: scripts that write on the
holder's behalf check it, see `state.frames`).

In Redis it is redis-py's Lock (a key holding the holder's random token,
expiring after `ttl` unless extended). In embedded mode there is one process:
the lock is always its own and fences nothing.
"""

from .state import get_state


class MemoryLock:
    shared = False  # one process: nothing to elect

    def __init__(self, key, ttl):
        self.key, self.ttl = key, ttl

    async def acquire(self):
        return True

    async def extend(self):
        return True

    async def owned(self):
        return True

    async def release(self):
        pass

    def fence(self):
        return None


class RedisLock:
    shared = True

    def __init__(self, key, ttl):
        self.key, self.ttl = key, ttl
        self.lock = None

    def _lock(self):
        if self.lock is None:
            self.lock = get_state().redis.lock(self.key, timeout=self.ttl, thread_local=False)
        return self.lock

    async def acquire(self):
        """Take the lock if nobody holds it; never waits."""
        return bool(await self._lock().acquire(blocking=False))

    async def extend(self):
        """Renew a held lock for a full `ttl`; False when it was lost."""
        from redis.exceptions import LockError

        try:
            await self._lock().reacquire()
        except LockError:
            return False
        return True

    async def owned(self):
        return bool(await self._lock().owned())

    async def release(self):
        """Give the lock up; raises redis' LockError or RedisError when it
        could not (it then expires on its own)."""
        await self._lock().release()

    def fence(self):
        """(lock key, token) of the current term, or None before the first acquire."""
        if self.lock is None or self.lock.local.token is None:
            return None
        token = self.lock.local.token
        return (self.key, token.decode() if isinstance(token, bytes) else token)


def get_lock(key, ttl):
    """The lock named `key` for this process (Redis in production)."""
    return MemoryLock(key, ttl) if get_state().embedded else RedisLock(key, ttl)
