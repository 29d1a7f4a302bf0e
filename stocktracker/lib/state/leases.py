"""Connection leases, and the entries that ride on them.

A lease set is a sorted set (member = connection id, score = expiry in ms).
Taking a lease drops expired members, checks every limit and adds the
member to every set in one Lua script, so limits hold under any number of
parallel connects, and a crashed process's connections stop counting once
their leases expire. Each member may carry an entry (JSON: who is connected,
for the live-sessions console), renewed and released with its leases.

A released connection id is remembered for one lease TTL (`keys.RELEASED`),
and every script that adds a member (acquire, renew, an entry) checks it
first: an acquire that timed out on our side but ran late in Redis, or a
renewal already on its way when the socket closed, can never bring a
released lease back.
"""

import json
import time

from .. import keys
from .base import NOW, StateUnavailable

# KEYS: [released set, lease sets...]; ARGV: ttl_ms, member, limit per lease
# set (-1 = count only). Returns 0 when the lease was taken, -1 when this
# member was released (a late run of a timed-out call), else the 1-based index
# of the lease set whose limit was reached. Uses the server clock so machines
# with skewed clocks agree. Taking a lease the member already holds extends it.
_ACQUIRE = (
    NOW
    + """
local ttl = tonumber(ARGV[1])
local member = ARGV[2]
local gone = redis.call('ZSCORE', KEYS[1], member)
if gone and tonumber(gone) > now then
  return -1
end
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
end
for i = 2, #KEYS do
  local limit = tonumber(ARGV[i + 1])
  if limit >= 0 and not redis.call('ZSCORE', KEYS[i], member) and redis.call('ZCARD', KEYS[i]) >= limit then
    return i - 1
  end
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, member)
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
return 0
"""
)

# Release many connections for good. KEYS: [released set, sessions index, then
# per connection its n lease sets and its session entry]; ARGV: ttl_ms, then
# per connection: member, n. Remembers each member as released for ttl_ms.
_RELEASE = (
    NOW
    + """
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local k = 3
local a = 2
while a <= #ARGV do
  local member = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for i = 0, n - 1 do
    redis.call('ZREM', KEYS[k + i], member)
  end
  redis.call('DEL', KEYS[k + n])
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZADD', KEYS[1], now + ttl, member)
  k = k + n + 1
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"""
)

# Renewal of many connections' leases and live-session entries in one call.
# KEYS: [released set, sessions index, then per connection its n lease sets
# and its session entry]; ARGV: ttl_ms, then per connection: member, n, n
# limits (-1 = count only), the session entry (JSON). A released member is
# never renewed. A lease still held is extended; one that was lost (Redis
# restarted) is taken again only where its limit has room. Returns the
# members that could not be renewed.
_RENEW = (
    NOW
    + """
local ttl = tonumber(ARGV[1])
local failed = {}
local trimmed = {}
local k = 3
local a = 2
while a <= #ARGV do
  local member = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local gone = redis.call('ZSCORE', KEYS[1], member)
  local ok = not (gone and tonumber(gone) > now)
  for i = 0, n - 1 do
    local key = KEYS[k + i]
    if not trimmed[key] then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      trimmed[key] = true
    end
    local limit = tonumber(ARGV[a + i])
    if ok and limit >= 0 and not redis.call('ZSCORE', key, member) and redis.call('ZCARD', key) >= limit then
      ok = false
    end
  end
  if ok then
    for i = 0, n - 1 do
      redis.call('ZADD', KEYS[k + i], now + ttl, member)
    end
    redis.call('SET', KEYS[k + n], ARGV[a + n], 'PX', ttl)
    redis.call('ZADD', KEYS[2], now + ttl, member)
  else
    failed[#failed + 1] = member
  end
  k = k + n + 1
  a = a + n + 1
end
for key, _ in pairs(trimmed) do
  redis.call('PEXPIRE', key, ttl * 2)
end
return failed
"""
)

# KEYS: [released set, sessions index, session entry]; ARGV: ttl_ms, member,
# entry (JSON). Writes a live-session entry unless the member was released.
_ENTRY_PUT = (
    NOW
    + """
local gone = redis.call('ZSCORE', KEYS[1], ARGV[2])
if gone and tonumber(gone) > now then
  return 0
end
redis.call('SET', KEYS[3], ARGV[3], 'PX', tonumber(ARGV[1]))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), ARGV[2])
return 1
"""
)


_MEMBERS = (
    NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""
)

_COUNT = (
    NOW
    + """
return redis.call('ZCOUNT', KEYS[1], now, '+inf')
"""
)


# KEYS: lease sets. Live members of each, in one round trip (admin lists).
_COUNT_MANY = (
    NOW
    + """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('ZCOUNT', key, now, '+inf')
end
return counts
"""
)


RENEW_CHUNK = 500  # connections per script call: keeps each call short for Redis


class MemoryLeases:
    def __init__(self):
        super().__init__()
        self._leases = {}  # lease set -> {member: expiry_s}
        self._entries = {}  # member -> (expiry_s, entry)
        self._released = {}  # member -> expiry_s: never taken or renewed again

    def _live(self, name):
        now = time.monotonic()
        members = self._leases.setdefault(name, {})
        for member in [m for m, exp in members.items() if exp <= now]:
            del members[member]
        return members

    def _is_released(self, conn_id):
        expiry = self._released.get(conn_id)
        return expiry is not None and expiry > time.monotonic()

    async def lease_acquire(self, conn_id, limits, ttl):
        """Take a lease in every set of `limits` [(set name, cap or None)]:
        0 when taken, -1 when `conn_id` was released, else the 1-based index
        of the set that is full."""
        # No await between check and add: atomic on one event loop.
        if self._is_released(conn_id):
            return -1
        sets = [(self._live(name), limit) for name, limit in limits]
        for index, (members, limit) in enumerate(sets, start=1):
            if limit is not None and conn_id not in members and len(members) >= limit:
                return index
        expiry = time.monotonic() + ttl
        for members, _ in sets:
            members[conn_id] = expiry
        return 0

    async def lease_release(self, conn_id, names):
        for name in names:
            self._leases.get(name, {}).pop(conn_id, None)

    async def lease_release_many(self, items, ttl):
        """Release [(conn_id, lease set names)] for good: leases, entries, and
        no later acquire or renewal of these ids for `ttl`."""
        now = time.monotonic()
        for conn_id in [c for c, exp in self._released.items() if exp <= now]:
            del self._released[conn_id]
        for conn_id, names in items:
            await self.lease_release(conn_id, names)
            self._entries.pop(conn_id, None)
            self._released[conn_id] = now + ttl

    async def renew(self, items, ttl):
        """Renew many connections at once: [(conn_id, limits, entry)].
        Returns the conn_ids that could not be renewed (released, or lost
        while their limit is full now)."""
        failed = []
        for conn_id, limits, info in items:
            if await self.lease_acquire(conn_id, limits, ttl):
                failed.append(conn_id)
            else:
                await self.entry_put(conn_id, info, ttl)
        return failed

    async def lease_count(self, name):
        return len(self._live(name))

    async def lease_counts(self, names):
        return [len(self._live(name)) for name in names]

    async def lease_members(self, name):
        """Live lease holders of `name`, sorted (connection ids sort by connect time)."""
        return sorted(self._live(name))

    async def entry_put(self, conn_id, info, ttl):
        """Write the entry of a lease holder, unless it was released."""
        if not self._is_released(conn_id):
            self._entries[conn_id] = (time.monotonic() + ttl, dict(info))

    async def entry_drop(self, conn_id):
        self._entries.pop(conn_id, None)

    async def entries(self):
        """Every live entry."""
        now = time.monotonic()
        for conn_id in [c for c, (exp, _) in self._entries.items() if exp <= now]:
            del self._entries[conn_id]
        return [info for _, info in self._entries.values()]


class RedisLeases:
    async def lease_acquire(self, conn_id, limits, ttl):
        """As MemoryLeases.lease_acquire, for every process at once (one script)."""
        script_keys = [keys.RELEASED] + [keys.lease_set(name) for name, _ in limits]
        args = [int(ttl * 1000), conn_id] + [-1 if limit is None else int(limit) for _, limit in limits]
        return int(await self._call(self.script(_ACQUIRE)(keys=script_keys, args=args)))

    async def lease_release(self, conn_id, names):
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrem(keys.lease_set(name), conn_id)
            await self._call(pipe.execute())

    async def lease_release_many(self, items, ttl):
        """Release [(conn_id, lease set names)] for good, in one script call
        per RENEW_CHUNK connections: leases, entries, and no later acquire or
        renewal of these ids for `ttl` seconds."""
        ms = int(ttl * 1000)
        for start in range(0, len(items), RENEW_CHUNK):
            script_keys, args = [keys.RELEASED, keys.ENTRIES], [ms]
            for conn_id, names in items[start : start + RENEW_CHUNK]:
                script_keys.extend(keys.lease_set(name) for name in names)
                script_keys.append(keys.entry(conn_id))
                args.extend([conn_id, len(names)])
            await self._call(self.script(_RELEASE)(keys=script_keys, args=args))

    async def renew(self, items, ttl):
        """Renew many connections at once, in one round trip: [(conn_id,
        limits, entry)]. Returns the conn_ids that could not be renewed
        (released, or lost while their limit is full now)."""
        if not items:
            return []
        ms = int(ttl * 1000)
        script = self.script(_RENEW)
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(items), RENEW_CHUNK):
                script_keys, args = [keys.RELEASED, keys.ENTRIES], [ms]
                for conn_id, limits, info in items[start : start + RENEW_CHUNK]:
                    script_keys.extend(keys.lease_set(name) for name, _ in limits)
                    script_keys.append(keys.entry(conn_id))
                    args.extend([conn_id, len(limits)])
                    args.extend(-1 if limit is None else int(limit) for _, limit in limits)
                    args.append(json.dumps(info))
                pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
            try:
                results = await self._call(pipe.execute())
            except StateUnavailable as exc:
                if "NoScript" not in str(exc) and "NOSCRIPT" not in str(exc):
                    raise
                await self._call(self.redis.script_load(_RENEW))  # Redis restarted: load it again
                return await self.renew(items, ttl)
        return [member for result in results for member in result]

    async def lease_count(self, name):
        return int(await self._call(self.script(_COUNT)(keys=[keys.lease_set(name)])))

    async def lease_counts(self, names):
        """Live members of each set, in one round trip (admin lists)."""
        if not names:
            return []
        counts = await self._call(self.script(_COUNT_MANY)(keys=[keys.lease_set(name) for name in names]))
        return [int(count) for count in counts]

    async def lease_members(self, name):
        """Live lease holders of `name`, sorted (connection ids sort by connect time)."""
        return sorted(await self._call(self.script(_MEMBERS)(keys=[keys.lease_set(name)])))

    async def entry_put(self, conn_id, info, ttl):
        """Write the entry of a lease holder, unless it was released."""
        script_keys = [keys.RELEASED, keys.ENTRIES, keys.entry(conn_id)]
        await self._call(self.script(_ENTRY_PUT)(keys=script_keys, args=[int(ttl * 1000), conn_id, json.dumps(info)]))

    async def entry_drop(self, conn_id):
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.entry(conn_id))
            pipe.zrem(keys.ENTRIES, conn_id)
            await self._call(pipe.execute())

    async def entries(self):
        """Every live entry, on every process."""
        await self._call(self.redis.zremrangebyscore(keys.ENTRIES, "-inf", time.time() * 1000))
        ids = await self._call(self.redis.zrange(keys.ENTRIES, 0, -1))
        if not ids:
            return []
        raws = await self._call(self.redis.mget([keys.entry(i) for i in ids]))
        return [json.loads(raw) for raw in raws if raw]
