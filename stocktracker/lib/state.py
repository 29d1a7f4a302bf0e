"""State shared by every process: latest frames, sequence numbers, feed state,
connection leases and the live-session registry.

Production keeps it in Redis so it holds across processes and machines;
embedded mode keeps it in this process. Both classes have the same async API,
and `get_state()` returns the right one for the current event loop.

Leases are sorted sets (member = connection id, score = expiry in ms). Taking
a lease drops expired members, checks every limit and adds the member to every
set in one Lua script, so limits hold under any number of parallel connects
and a crashed process's connections stop counting once their leases expire.

A released connection id is remembered for one lease TTL (`stk:lease:released`),
and every script that adds a member (acquire, renew, the session entry) checks
it first: an acquire that timed out on our side but ran late in Redis, or a
renewal already on its way when the socket closed, can never bring a released
lease back.
"""

import datetime as dt
import json
import secrets
import time

from django.conf import settings

from .aio import PerLoop

PREFIX = "stk:"

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: [released set, lease sets...]; ARGV: ttl_ms, member, limit per lease
# set (-1 = count only). Returns 0 when the lease was taken, -1 when this
# member was released (a late run of a timed-out call), else the 1-based index
# of the lease set whose limit was reached. Uses the server clock so machines
# with skewed clocks agree. Taking a lease the member already holds extends it.
_ACQUIRE = (
    _NOW
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
    _NOW
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
    _NOW
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
_SESSION_PUT = (
    _NOW
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

RENEW_CHUNK = 500  # connections per script call: keeps each call short for Redis

# KEYS: [seq hash]; ARGV: epoch. Sequence restarts at 1 when the epoch changes.
_NEXT_SEQ = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', 0)
end
return redis.call('HINCRBY', KEYS[1], 'seq', 1)
"""

# KEYS: [seq hash, latest key, fence key]; ARGV: epoch, frame head, frame
# tail, fence token ('' = unfenced). Numbers and stores a snapshot in one
# step, only while the fence key still holds the caller's token: a leader
# that was paused past its lock's TTL gets -1 and publishes nothing, and the
# latest frame is always the highest seq of its epoch.
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
# Stores the feed state only while the fence key holds the caller's token (as
# _PUBLISH does): a leader paused past its lock's TTL gets 0 and writes nothing.
_FEED_SET = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

_MEMBERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""

_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], now, '+inf')
"""


# KEYS: lease sets. Live members of each, in one round trip (admin lists).
_COUNT_MANY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('ZCOUNT', key, now, '+inf')
end
return counts
"""


def _new_generation():
    return secrets.token_hex(8)


REDIS_POOL_SIZE = 50  # connections per process (and event loop)
RELEASED = f"{PREFIX}lease:released"  # connection ids released in the last lease TTL
SESSIONS = f"{PREFIX}sessions"


class StateUnavailable(Exception):
    """The shared store (Redis) cannot be reached; callers answer with 1013 / 503."""


class Fenced(Exception):
    """The caller's leader term is over (another process holds the lock): nothing was published."""


class MemoryState:
    """In-process state for embedded mode (one process, no Redis)."""

    embedded = True

    def __init__(self):
        self._latest = {}
        self._seq = {}
        self._feed = None
        self._leases = {}  # key -> {member: expiry_s}
        self._sessions = {}  # conn_id -> (expiry_s, info)
        self._released = {}  # conn_id -> expiry_s: never taken or renewed again
        self._demo_anchor = None

    async def latest_get(self, stream):
        return self._latest.get(stream)

    async def latest_set(self, stream, text):
        self._latest[stream] = text

    async def seq_next(self, stream, epoch):
        last_epoch, seq = self._seq.get(stream, (None, 0))
        seq = seq + 1 if last_epoch == epoch else 1
        self._seq[stream] = (epoch, seq)
        return seq

    async def latest_publish(self, stream, epoch, head, tail, fence=None):
        """Number and store a snapshot (head + seq + tail); returns (seq, text).
        One process: no other leader to fence out."""
        seq = await self.seq_next(stream, epoch)
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

    async def demo_anchor(self):
        """The wall moment the simulator's demo day starts at (set once)."""
        if self._demo_anchor is None:
            self._demo_anchor = dt.datetime.now(dt.UTC)
        return self._demo_anchor

    def _live(self, key):
        now = time.monotonic()
        members = self._leases.setdefault(key, {})
        for member in [m for m, exp in members.items() if exp <= now]:
            del members[member]
        return members

    def _is_released(self, conn_id):
        expiry = self._released.get(conn_id)
        return expiry is not None and expiry > time.monotonic()

    async def lease_acquire(self, conn_id, limits, ttl):
        # No await between check and add: atomic on one event loop.
        if self._is_released(conn_id):
            return -1
        sets = [(self._live(key), limit) for key, limit in limits]
        for index, (members, limit) in enumerate(sets, start=1):
            if limit is not None and conn_id not in members and len(members) >= limit:
                return index
        expiry = time.monotonic() + ttl
        for members, _ in sets:
            members[conn_id] = expiry
        return 0

    async def lease_release(self, conn_id, keys):
        for key in keys:
            self._leases.get(key, {}).pop(conn_id, None)

    async def lease_release_many(self, items, ttl):
        """Release [(conn_id, lease keys)] for good: leases, live-session
        entries, and no later acquire or renewal of these ids for `ttl`."""
        now = time.monotonic()
        for conn_id in [c for c, exp in self._released.items() if exp <= now]:
            del self._released[conn_id]
        for conn_id, keys in items:
            await self.lease_release(conn_id, keys)
            self._sessions.pop(conn_id, None)
            self._released[conn_id] = now + ttl

    async def renew(self, items, ttl):
        """Renew many connections at once: [(conn_id, limits, session entry)].
        Returns the conn_ids that could not be renewed (released, or lost
        while their limit is full now)."""
        failed = []
        for conn_id, limits, info in items:
            if await self.lease_acquire(conn_id, limits, ttl):
                failed.append(conn_id)
            else:
                await self.session_put(conn_id, info, ttl)
        return failed

    async def lease_count(self, key):
        return len(self._live(key))

    async def lease_members(self, key):
        """Live lease holders of `key`, sorted (connection ids sort by connect time)."""
        return sorted(self._live(key))

    async def session_put(self, conn_id, info, ttl):
        if not self._is_released(conn_id):
            self._sessions[conn_id] = (time.monotonic() + ttl, dict(info))

    async def session_drop(self, conn_id):
        self._sessions.pop(conn_id, None)

    async def sessions(self):
        now = time.monotonic()
        for conn_id in [c for c, (exp, _) in self._sessions.items() if exp <= now]:
            del self._sessions[conn_id]
        return [info for _, info in self._sessions.values()]

    # --- batch counts, generations and claims (apps.accounts) -------------------

    async def lease_counts(self, keys):
        return [len(self._live(key)) for key in keys]

    @property
    def _generations(self):
        return self.__dict__.setdefault("_generation_values", {})

    async def generation_get(self, key):
        """The current generation of `key` (an opaque string), or None."""
        return self._generations.get(key)

    async def generation_init(self, key, ttl):
        """Give `key` a generation if it has none (never changes an existing
        one); returns the new generation, or None if `key` already had one."""
        if key in self._generations:
            return None
        value = self._generations[key] = _new_generation()
        return value

    async def generation_bump(self, keys, ttl):
        """Give every key a new generation: caches holding an older one reload."""
        for key in keys:
            self._generations[key] = _new_generation()

    async def claim(self, key, ttl):
        """True for the first caller in each `ttl` seconds, False for the others."""
        claims = self.__dict__.setdefault("_claims", {})
        now = time.monotonic()
        if claims.get(key, 0) > now:
            return False
        if len(claims) > 10_000:
            for old in [k for k, exp in claims.items() if exp <= now]:
                del claims[old]
        claims[key] = now + ttl
        return True

    async def counter_get(self, key):
        """The value of a windowed counter (0 when absent or expired)."""
        counters = self.__dict__.setdefault("_counters", {})
        value, expiry = counters.get(key, (0, 0))
        return value if expiry > time.monotonic() else 0

    async def counter_incr(self, key, ttl):
        """Add one to a counter that disappears `ttl` seconds after its first use."""
        counters = self.__dict__.setdefault("_counters", {})
        now = time.monotonic()
        if len(counters) > 10_000:
            for old in [k for k, (_, exp) in counters.items() if exp <= now]:
                del counters[old]
        value, expiry = counters.get(key, (0, 0))
        counters[key] = (value + 1, expiry) if expiry > now else (1, now + ttl)
        return counters[key][0]

    async def counter_decr(self, key):
        counters = self.__dict__.setdefault("_counters", {})
        value, expiry = counters.get(key, (0, 0))
        if value > 0:
            counters[key] = (value - 1, expiry)

    async def ping(self):
        return True


class RedisState:
    """Shared state in Redis (production)."""

    embedded = False
    failing_until = 0.0  # monotonic: calls fail at once until then (see _call)

    def __init__(self, url):
        import redis.asyncio as aioredis

        # Short timeouts: a Redis outage must turn into a quick 1013, never a hang.
        # A bounded pool that makes callers wait for a free connection: a burst
        # of connects must queue, not fail with "Too many connections" (which
        # would read as Redis being down).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_POOL_SIZE,
            timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
            socket_keepalive=True,
            health_check_interval=15,
            decode_responses=True,
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._next_seq = self.redis.register_script(_NEXT_SEQ)
        self._publish = self.redis.register_script(_PUBLISH)
        self._feed_set = self.redis.register_script(_FEED_SET)
        self._count = self.redis.register_script(_COUNT)
        self._members = self.redis.register_script(_MEMBERS)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._session_put = self.redis.register_script(_SESSION_PUT)

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

    async def latest_get(self, stream):
        return await self._call(self.redis.get(f"{PREFIX}latest:{stream}"))

    async def latest_set(self, stream, text):
        await self._call(self.redis.set(f"{PREFIX}latest:{stream}", text))

    async def seq_next(self, stream, epoch):
        return int(await self._call(self._next_seq(keys=[f"{PREFIX}seq:{stream}"], args=[epoch])))

    async def latest_publish(self, stream, epoch, head, tail, fence=None):
        """Number and store a snapshot (head + seq + tail) in one script;
        returns (seq, text). `fence` is (lock key, token): raises Fenced when
        the lock is no longer the caller's."""
        key, token = fence if fence else ("", "")
        keys = [f"{PREFIX}seq:{stream}", f"{PREFIX}latest:{stream}", key or f"{PREFIX}unfenced"]
        seq = int(await self._call(self._publish(keys=keys, args=[epoch, head, tail, token or ""])))
        if seq < 0:
            raise Fenced(f"{key} is no longer held by this process")
        return seq, f"{head}{seq}{tail}"

    async def feed_get(self):
        raw, heartbeat = await self._call(self.redis.mget(f"{PREFIX}feed", f"{PREFIX}feed:heartbeat"))
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
        keys = [f"{PREFIX}feed", key or f"{PREFIX}unfenced"]
        if not int(await self._call(self._feed_set(keys=keys, args=[json.dumps(state), token or ""]))):
            raise Fenced(f"{key} is no longer held by this process")

    async def feed_touch(self):
        """Record that the feed loop is alive (readiness reads its age)."""
        await self._call(self.redis.set(f"{PREFIX}feed:heartbeat", int(time.time() * 1000), ex=3600))

    async def demo_anchor(self):
        """The wall moment the simulator's demo day starts at: the first
        process to ask sets it; every other one reads the same."""
        key = f"{PREFIX}demo:anchor"
        await self._call(self.redis.set(key, int(time.time() * 1000), nx=True))
        raw = await self._call(self.redis.get(key))
        return dt.datetime.fromtimestamp(int(raw) / 1000, dt.UTC)

    async def lease_acquire(self, conn_id, limits, ttl):
        keys = [RELEASED] + [f"{PREFIX}lease:{key}" for key, _ in limits]
        args = [int(ttl * 1000), conn_id] + [-1 if limit is None else int(limit) for _, limit in limits]
        return int(await self._call(self._acquire(keys=keys, args=args)))

    async def lease_release_many(self, items, ttl):
        """Release [(conn_id, lease keys)] for good, in one script call per
        RENEW_CHUNK connections: leases, live-session entries, and no later
        acquire or renewal of these ids for `ttl` seconds."""
        ms = int(ttl * 1000)
        for start in range(0, len(items), RENEW_CHUNK):
            keys, args = [RELEASED, SESSIONS], [ms]
            for conn_id, lease_keys in items[start : start + RENEW_CHUNK]:
                keys.extend(f"{PREFIX}lease:{key}" for key in lease_keys)
                keys.append(f"{PREFIX}session:{conn_id}")
                args.extend([conn_id, len(lease_keys)])
            await self._call(self._release(keys=keys, args=args))

    async def renew(self, items, ttl):
        """Renew many connections at once, in one round trip: [(conn_id,
        limits, session entry)]. Returns the conn_ids that could not be
        renewed (released, or lost while their limit is full now)."""
        if not items:
            return []
        ms = int(ttl * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(items), RENEW_CHUNK):
                keys, args = [RELEASED, SESSIONS], [ms]
                for conn_id, limits, info in items[start : start + RENEW_CHUNK]:
                    keys.extend(f"{PREFIX}lease:{key}" for key, _ in limits)
                    keys.append(f"{PREFIX}session:{conn_id}")
                    args.extend([conn_id, len(limits)])
                    args.extend(-1 if limit is None else int(limit) for _, limit in limits)
                    args.append(json.dumps(info))
                pipe.evalsha(self._renew.sha, len(keys), *keys, *args)
            try:
                results = await self._call(pipe.execute())
            except StateUnavailable as exc:
                if "NoScript" not in str(exc) and "NOSCRIPT" not in str(exc):
                    raise
                await self._call(self.redis.script_load(_RENEW))  # Redis restarted: load it again
                return await self.renew(items, ttl)
        return [member for result in results for member in result]

    async def lease_release(self, conn_id, keys):
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrem(f"{PREFIX}lease:{key}", conn_id)
            await self._call(pipe.execute())

    async def lease_count(self, key):
        return int(await self._call(self._count(keys=[f"{PREFIX}lease:{key}"])))

    async def lease_members(self, key):
        """Live lease holders of `key`, sorted (connection ids sort by connect time)."""
        return sorted(await self._call(self._members(keys=[f"{PREFIX}lease:{key}"])))

    async def session_put(self, conn_id, info, ttl):
        keys = [RELEASED, SESSIONS, f"{PREFIX}session:{conn_id}"]
        await self._call(self._session_put(keys=keys, args=[int(ttl * 1000), conn_id, json.dumps(info)]))

    async def session_drop(self, conn_id):
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{PREFIX}session:{conn_id}")
            pipe.zrem(f"{PREFIX}sessions", conn_id)
            await self._call(pipe.execute())

    async def sessions(self):
        await self._call(self.redis.zremrangebyscore(f"{PREFIX}sessions", "-inf", time.time() * 1000))
        ids = await self._call(self.redis.zrange(f"{PREFIX}sessions", 0, -1))
        if not ids:
            return []
        raws = await self._call(self.redis.mget([f"{PREFIX}session:{i}" for i in ids]))
        return [json.loads(raw) for raw in raws if raw]

    # --- batch counts, generations and claims (apps.accounts) -------------------

    async def lease_counts(self, keys):
        if not keys:
            return []
        script = self.__dict__.get("_count_many") or self.__dict__.setdefault(
            "_count_many", self.redis.register_script(_COUNT_MANY)
        )
        counts = await self._call(script(keys=[f"{PREFIX}lease:{key}" for key in keys]))
        return [int(count) for count in counts]

    async def generation_get(self, key):
        """The current generation of `key` (an opaque string), or None."""
        return await self._call(self.redis.get(f"{PREFIX}gen:{key}"))

    async def generation_init(self, key, ttl):
        """Give `key` a generation if it has none (never changes an existing
        one); returns the new generation, or None if `key` already had one."""
        value = _new_generation()
        created = await self._call(self.redis.set(f"{PREFIX}gen:{key}", value, nx=True, ex=max(1, int(ttl))))
        return value if created else None

    async def generation_bump(self, keys, ttl):
        """Give every key a new generation: caches holding an older one reload."""
        if not keys:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(f"{PREFIX}gen:{key}", _new_generation(), ex=max(1, int(ttl)))
            await self._call(pipe.execute())

    async def claim(self, key, ttl):
        """True for the first caller in each `ttl` seconds, on any process."""
        return bool(await self._call(self.redis.set(f"{PREFIX}claim:{key}", 1, nx=True, px=max(1, int(ttl * 1000)))))

    async def counter_get(self, key):
        """The value of a windowed counter (0 when absent or expired)."""
        return int(await self._call(self.redis.get(f"{PREFIX}count:{key}")) or 0)

    async def counter_incr(self, key, ttl):
        """Add one to a counter that disappears `ttl` seconds after its first use
        (one round trip); returns the new value."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(f"{PREFIX}count:{key}")
            pipe.expire(f"{PREFIX}count:{key}", max(1, int(ttl)), nx=True)
            value, _ = await self._call(pipe.execute())
        return int(value)

    async def counter_decr(self, key):
        await self._call(self.redis.decr(f"{PREFIX}count:{key}"))

    async def ping(self):
        return await self._call(self.redis.ping(), probe=True)


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
