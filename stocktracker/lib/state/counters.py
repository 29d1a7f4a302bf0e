"""Small shared values: generations (cache invalidation), claims (once per
interval on any process), windowed counters (budgets), values set once (the
first writer wins), plain values, the store's incarnation, and sets of known
names whose members each run out at their own time."""

import math
import secrets
import time

from .. import keys

MEMORY_BOUND = 10_000  # entries kept in memory before expired ones are swept


def _new_generation():
    return secrets.token_hex(8)


def _sweep(table, expiry_of):
    if len(table) > MEMORY_BOUND:
        now = time.monotonic()
        for old in [k for k, v in table.items() if expiry_of(v) <= now]:
            del table[old]


class MemoryCounters:
    def __init__(self):
        super().__init__()
        self._generations = {}
        self._claims = {}  # name -> expiry
        self._counters = {}  # name -> (value, expiry)
        self._values = {}
        self._store = _new_generation()  # the process is the store: it lasts as long as the process
        self._known = {}  # name -> {member: epoch seconds it runs out}

    async def generation_get(self, name):
        """The current generation of `name` (an opaque string), or None."""
        return self._generations.get(name)

    async def generation_init(self, name, ttl):
        """Give `name` a generation if it has none (never changes an existing
        one); returns the new generation, or None if it already had one."""
        if name in self._generations:
            return None
        value = self._generations[name] = _new_generation()
        return value

    async def generation_bump(self, names, ttl):
        """Give every name a new generation: caches holding an older one reload."""
        for name in names:
            self._generations[name] = _new_generation()

    async def claim(self, name, ttl):
        """True for the first caller in each `ttl` seconds, False for the others."""
        now = time.monotonic()
        if self._claims.get(name, 0) > now:
            return False
        _sweep(self._claims, lambda expiry: expiry)
        self._claims[name] = now + ttl
        return True

    async def counter_incr(self, name, ttl):
        """Add one to a counter that disappears `ttl` seconds after its first use."""
        now = time.monotonic()
        _sweep(self._counters, lambda item: item[1])
        value, expiry = self._counters.get(name, (0, 0))
        self._counters[name] = (value + 1, expiry) if expiry > now else (1, now + ttl)
        return self._counters[name][0]

    async def counter_decr(self, name):
        value, expiry = self._counters.get(name, (0, 0))
        if value > 0:
            self._counters[name] = (value - 1, expiry)

    async def first_value(self, key, value):
        """Store `value` under `key` unless one is there; returns the stored one."""
        return self._values.setdefault(key, str(value))

    async def value_get(self, key):
        return self._values.get(key)

    async def value_set(self, key, text):
        self._values[key] = text

    async def store_incarnation(self):
        """An opaque value that changes only when the store lost its data."""
        return self._store

    async def known_add(self, name, members):
        """Add `members` ({member: epoch seconds it runs out, or None for never})
        to the set `name`; a member keeps the later of two ends."""
        table = self._known.setdefault(name, {})
        for member, until in members.items():
            until = math.inf if until is None else until
            table[member] = max(until, table.get(member, -math.inf))
        if len(table) > MEMORY_BOUND:
            now = time.time()
            for old in [m for m, until in table.items() if until <= now]:
                del table[old]

    async def known_until(self, name, member):
        """When `member` of the set `name` runs out (epoch seconds, inf for
        never), or None if it is not there or ran out."""
        until = self._known.get(name, {}).get(member)
        return until if until is not None and until > time.time() else None


class RedisCounters:
    async def generation_get(self, name):
        """The current generation of `name` (an opaque string), or None."""
        return await self._call(self.redis.get(keys.generation(name)))

    async def generation_init(self, name, ttl):
        """Give `name` a generation if it has none (never changes an existing
        one); returns the new generation, or None if it already had one."""
        value = _new_generation()
        created = await self._call(self.redis.set(keys.generation(name), value, nx=True, ex=max(1, int(ttl))))
        return value if created else None

    async def generation_bump(self, names, ttl):
        """Give every name a new generation: caches holding an older one reload."""
        if not names:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.set(keys.generation(name), _new_generation(), ex=max(1, int(ttl)))
            await self._call(pipe.execute())

    async def claim(self, name, ttl):
        """True for the first caller in each `ttl` seconds, on any process."""
        return bool(await self._call(self.redis.set(keys.claim(name), 1, nx=True, px=max(1, int(ttl * 1000)))))

    async def counter_incr(self, name, ttl):
        """Add one to a counter that disappears `ttl` seconds after its first
        use (one round trip); returns the new value."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(keys.counter(name))
            pipe.expire(keys.counter(name), max(1, int(ttl)), nx=True)
            value, _ = await self._call(pipe.execute())
        return int(value)

    async def counter_decr(self, name):
        await self._call(self.redis.decr(keys.counter(name)))

    async def first_value(self, key, value):
        """Store `value` under `key` unless one is there; returns the stored
        one (the same on every process)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, value, nx=True)
            pipe.get(key)
            _, stored = await self._call(pipe.execute())
        return stored

    async def value_get(self, key):
        return await self._call(self.redis.get(key))

    async def value_set(self, key, text):
        await self._call(self.redis.set(key, text))

    async def store_incarnation(self):
        """An opaque value that changes only when Redis lost its data (a
        restart without persistence, a flush, a replica that never had it):
        a process that sees it change knows that every lease and entry it
        wrote is gone (`apps.streams.sessions` writes them again)."""
        return await self.first_value(keys.STORE, _new_generation())

    async def known_add(self, name, members):
        """Add `members` ({member: epoch seconds it runs out, or None for never})
        to the set `name` (a sorted set scored by that time); a member keeps
        the later of two ends. Members that ran out are swept on the way."""
        if not members:
            return
        scores = {member: ("+inf" if until is None else until) for member, until in members.items()}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.known(name), scores, gt=True)  # GT adds new members too
            pipe.zremrangebyscore(keys.known(name), "-inf", time.time())
            await self._call(pipe.execute())

    async def known_until(self, name, member):
        """When `member` of the set `name` runs out (epoch seconds, inf for
        never), or None if it is not there or ran out."""
        until = await self._call(self.redis.zscore(keys.known(name), member))
        return until if until is not None and until > time.time() else None
