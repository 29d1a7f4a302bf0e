"""What every part of the shared state stands on: its errors, the Redis
connection with its fail-fast rule, and the ping."""

import time

from django.conf import settings

# Redis's own clock, in ms: scripts use it so that machines with skewed clocks agree.
NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

REDIS_POOL_SIZE = 50  # connections per process (and event loop)


class StateUnavailable(Exception):
    """The shared store (Redis) cannot be reached; callers answer with 1013 / 503."""


class Fenced(Exception):
    """The caller's leader term is over (another process holds the lock): nothing was published."""


class MemoryBase:
    """One process, no Redis (embedded mode)."""

    embedded = True

    async def ping(self):
        return True


class RedisBase:
    """A bounded pool to one Redis, and `_call` around every command."""

    embedded = False
    failing_until = 0.0  # monotonic: calls fail at once until then (see _call)

    def __init__(self, url):
        from .. import redis as redis_lib

        # One server or the master behind Sentinel (lib/redis.py). Short
        # timeouts: a Redis outage must turn into a quick 1013, never a hang.
        # Callers wait for a free connection: a burst of connects queues
        # rather than fail with "Too many connections" (which would read as
        # Redis being down).
        self.redis = redis_lib.async_client(url, max_connections=REDIS_POOL_SIZE)
        self._scripts = {}

    def script(self, source):
        """A registered Lua script (loaded again by redis-py if Redis lost it)."""
        found = self._scripts.get(source)
        if found is None:
            found = self._scripts[source] = self.redis.register_script(source)
        return found

    async def _call(self, coro, probe=False):
        from redis.exceptions import ConnectionError, RedisError, TimeoutError

        # Redis just failed to answer this process (a timeout, a refused or
        # exhausted connection): for REDIS_SOCKET_TIMEOUT, calls fail at once
        # instead of each waiting out its own timeout, so a connect that makes
        # several calls is still refused quickly. The watchdog's ping (`probe`)
        # always goes through, and any answer closes the gap.
        if not probe and self.failing_until > time.monotonic():
            coro.close()
            raise StateUnavailable("redis did not answer just now")
        # Any Redis failure (connection, timeout, READONLY replica, OOM,
        # LOADING, a script error) means the shared state cannot serve us.
        try:
            result = await coro
        except (RedisError, OSError) as exc:
            if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
                self.failing_until = time.monotonic() + settings.REDIS_SOCKET_TIMEOUT
            raise StateUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self.failing_until = 0.0
        return result

    async def ping(self):
        return await self._call(self.redis.ping(), probe=True)
