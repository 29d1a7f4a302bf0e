"""Redis clients built from settings: one server, or a master found through Sentinel.

REDIS_URL is either a plain URL (`redis://`, `rediss://`, `unix://`, as redis-py
reads them) or

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service_name[/db]

where the hosts are Sentinels (port 26379 when left out), `service_name` is
the name in their `sentinel monitor` line, and the password is the master's.
The Sentinels' own password, if they have one, is REDIS_SENTINEL_PASSWORD.

- `parse_url()`: a `Target`, or ValueError with a message that shows no secret;
  `behind_sentinel()`: whether REDIS_URL names a master behind Sentinel.
- `async_client()`: the asyncio client, on a bounded pool that makes callers
  wait for a free connection (shared state, the leader lock).
- `sync_client()`: a client for a thread of its own (the watchdog's).
- `channel_layer_host()`: the `hosts` entry for channels_redis (either layer).
- `master_address()`: where the Sentinels say the master is now.
- `follow_master()`, `follow_master_sync()`, `follow_master_layer()`: move a
  client's (or a channel layer's) connections to that master.

Behind Sentinel every new connection asks the Sentinels where the master is.
A server that answers a write with READONLY is a replica now: the connection
is dropped and the command is sent once more, on a new connection to the
master found then (a command refused with READONLY did not run, so sending it
again is safe). The same holds for a plain URL whose name or address moved to
a new master (a virtual IP, a managed endpoint). What no reply reveals is a
demoted master that still takes writes: after SENTINEL FAILOVER the old master
stays writable until the Sentinels reconfigure it, seconds later,
and connections made before the failover keep writing there; those writes
are lost. `follow_master()`, called periodically, bounds that window.
"""

import asyncio
import dataclasses
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.backoff
import redis.connection
import redis.exceptions
import redis.retry
import redis.sentinel

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
PLAIN_SCHEMES = ("redis", "rediss", "unix")
POOL_SIZE = 50  # connections per client (one client per process and event loop)
SENTINEL_USAGE = "use redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]"


class FailedOver(redis.exceptions.ConnectionError):
    """The server answered READONLY: it is a replica now. The connection was dropped."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where Redis is: a plain URL, or a service behind Sentinels."""

    url: str
    sentinels: tuple = ()  # ((host, port), ...)
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)

    @property
    def behind_sentinel(self):
        return bool(self.sentinels)

    def __str__(self):
        return redact(self.url)


def redact(url):
    """`url` with its password replaced by ***, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}://{shown}@{hosts}{slash}{path}"


def parse_url(url):
    """The Target of REDIS_URL. ValueError says what is wrong without repeating the URL."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (*PLAIN_SCHEMES, SENTINEL_SCHEME):
        raise ValueError(
            "must start with redis://, rediss:// or unix:// (one server) "
            f"or {SENTINEL_SCHEME}:// (a master found through Sentinel)"
        )
    if scheme != SENTINEL_SCHEME:
        try:
            redis.connection.parse_url(url)
        except ValueError as exc:
            raise ValueError(f"is not a valid Redis URL: {exc}") from None
        return Target(url=url)
    if "?" in rest or "#" in rest:
        raise ValueError(
            f"takes no query options (timeouts come from REDIS_SOCKET_TIMEOUT, REDIS_CONNECT_TIMEOUT): {SENTINEL_USAGE}"
        )
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # one word: the password, as in redis://:password@host
            username, password = None, unquote(user) or None
    sentinels = tuple(_host_port(item) for item in hosts.split(",") if item.strip())
    if not sentinels:
        raise ValueError(f"names no Sentinel: {SENTINEL_USAGE}")
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise ValueError(f"names no service (the name in `sentinel monitor`): {SENTINEL_USAGE}")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        extra = "/".join(parts[1:])
        raise ValueError(f"has {extra!r} after the service, where a database number belongs: {SENTINEL_USAGE}")
    db = int(parts[1]) if len(parts) == 2 else 0
    return Target(url=url, sentinels=sentinels, service=unquote(parts[0]), db=db, username=username, password=password)


def behind_sentinel(url=None):
    """True when REDIS_URL (or `url`) names a master behind Sentinel."""
    url = _settings().REDIS_URL if url is None else url
    return bool(url) and parse_url(url).behind_sentinel


def _host_port(item):
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    elif item.count(":") > 1:
        raise ValueError(f"sentinel {item!r}: write an IPv6 address in brackets, [addr]:port")
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ValueError(f"sentinel {item!r} has no host: {SENTINEL_USAGE}")
    if not port:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel {item!r}: the port must be a number from 1 to 65535")
    return host, int(port)


# --- READONLY: drop the connection, send the command once more --------------------


def _is_readonly(exc):
    # Sentinel-managed connections already turn READONLY into a ConnectionError
    # (redis/asyncio/sentinel.py); the ReadOnlyError is its context.
    return isinstance(exc, redis.exceptions.ReadOnlyError) or isinstance(
        exc.__context__, redis.exceptions.ReadOnlyError
    )


def _where(connection):
    host = getattr(connection, "host", None)
    return f"{host}:{connection.port}" if host else getattr(connection, "path", "redis")


class _AsyncDropOnReadOnly:
    async def read_response(self, *args, **kwargs):
        try:
            return await super().read_response(*args, **kwargs)
        except (redis.exceptions.ReadOnlyError, redis.exceptions.ConnectionError) as exc:
            if not _is_readonly(exc):
                raise
            await self.disconnect(nowait=True)
            raise FailedOver(f"{_where(self)} answered READONLY: it is a replica now") from exc


class _SyncDropOnReadOnly:
    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except (redis.exceptions.ReadOnlyError, redis.exceptions.ConnectionError) as exc:
            if not _is_readonly(exc):
                raise
            self.disconnect()
            raise FailedOver(f"{_where(self)} answered READONLY: it is a replica now") from exc


class _AsyncAskSentinels:
    # redis-py 8.1 reconnects a dropped connection on its next send straight to
    # its old address, without asking the Sentinels (redis/redis-py#3874):
    # after READONLY that is the demoted master again. connect() asks them.
    async def send_packed_command(self, command, check_health=True):
        if not self.is_connected:
            await self.connect()
        return await super().send_packed_command(command, check_health)


class _SyncAskSentinels:
    def send_packed_command(self, command, check_health=True):
        if not self.is_connected:
            self.connect()
        return super().send_packed_command(command, check_health)


_classes = {}
_SENTINEL_MANAGED = (redis.asyncio.sentinel.SentinelManagedConnection, redis.sentinel.SentinelManagedConnection)


def _drop_on_readonly(base):
    """`base` (a redis-py connection class) that turns READONLY into FailedOver
    and, when Sentinel-managed, reconnects only through the Sentinels."""
    found = _classes.get(base)
    if found is None:
        is_async = issubclass(base, redis.asyncio.connection.AbstractConnection)
        mixins = [_AsyncDropOnReadOnly if is_async else _SyncDropOnReadOnly]
        if issubclass(base, _SENTINEL_MANAGED):
            mixins.append(_AsyncAskSentinels if is_async else _SyncAskSentinels)
        found = _classes[base] = type(f"FailoverAware{base.__name__}", (*mixins, base), {})
    return found


class _AsyncResend(redis.asyncio.retry.Retry):
    """redis-py's default for a pool's connections (call the failure handler on
    a connection error or timeout, which drops or reconnects the connection,
    then raise), except that a FailedOver command is sent once more."""

    def __init__(self):
        super().__init__(redis.backoff.NoBackoff(), 1)

    async def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        failures = 0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                failures += 1
                await (fail(error, failures) if with_failure_count else fail(error))
                if failures > self._retries or not isinstance(error, FailedOver):
                    raise


class _SyncResend(redis.retry.Retry):
    """The same as _AsyncResend, for the sync client."""

    def __init__(self):
        super().__init__(redis.backoff.NoBackoff(), 1)

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                failures += 1
                fail(error, failures) if with_failure_count else fail(error)
                if failures > self._retries or not isinstance(error, FailedOver):
                    raise


# --- pools and clients -----------------------------------------------------------


class BlockingSentinelConnectionPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """A Sentinel-managed pool that makes callers wait for a free connection
    (redis-py has none): a burst must queue, not fail with "Too many connections"."""

    async def aclose(self):
        await super().aclose()
        await self.sentinel_manager.aclose()


def _settings():
    from django.conf import settings

    return settings


def _sentinel_kwargs(socket_timeout, connect_timeout, sentinel_password, is_async=True):
    """Connections to the Sentinels: the same timeouts, their own password, and
    no retries (redis-py's default would retry a dead Sentinel ten times before
    asking the next one)."""
    retry = (redis.asyncio.retry.Retry if is_async else redis.retry.Retry)(redis.backoff.NoBackoff(), 0)
    kwargs = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_keepalive": True,
        "retry": retry,
    }
    if sentinel_password:
        kwargs["password"] = sentinel_password
    return kwargs


def _plain(target, options, is_async):
    """(connection class, keyword arguments) for a plain URL: what the URL
    says (host, port, db, password, TLS or a Unix socket) over our options."""
    module = redis.asyncio.connection if is_async else redis.connection
    url_options = module.parse_url(target.url)
    base = url_options.pop("connection_class", module.Connection)
    if issubclass(base, module.UnixDomainSocketConnection):
        options = {k: v for k, v in options.items() if k != "socket_keepalive"}  # TCP only
    return base, {**options, **url_options}


def _resolve(url, socket_timeout, connect_timeout, sentinel_password):
    settings = _settings() if None in (url, socket_timeout, connect_timeout, sentinel_password) else None
    target = url if isinstance(url, Target) else parse_url(settings.REDIS_URL if url is None else url)
    return (
        target,
        settings.REDIS_SOCKET_TIMEOUT if socket_timeout is None else socket_timeout,
        settings.REDIS_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
        getattr(settings, "REDIS_SENTINEL_PASSWORD", "") if sentinel_password is None else sentinel_password,
    )


def async_client(
    url=None,
    *,
    max_connections=POOL_SIZE,
    socket_timeout=None,
    connect_timeout=None,
    sentinel_password=None,
    health_check_interval=15,
    decode_responses=True,
):
    """An asyncio client on a bounded, blocking pool: a caller waits up to
    `socket_timeout` for a free connection. Defaults come from settings
    (REDIS_URL, REDIS_SOCKET_TIMEOUT, REDIS_CONNECT_TIMEOUT,
    REDIS_SENTINEL_PASSWORD). Its connections belong to the running event loop."""
    target, socket_timeout, connect_timeout, sentinel_password = _resolve(
        url, socket_timeout, connect_timeout, sentinel_password
    )
    options = {
        "max_connections": max_connections,
        "timeout": socket_timeout,  # waiting for a free connection
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": health_check_interval,
        "decode_responses": decode_responses,
        "retry": _AsyncResend(),
    }
    if target.behind_sentinel:
        sentinel = redis.asyncio.sentinel.Sentinel(
            target.sentinels,
            sentinel_kwargs=_sentinel_kwargs(socket_timeout, connect_timeout, sentinel_password),
        )
        pool = BlockingSentinelConnectionPool(
            target.service,
            sentinel,
            connection_class=_drop_on_readonly(redis.asyncio.sentinel.SentinelManagedConnection),
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
        )
    else:
        base, url_options = _plain(target, options, is_async=True)
        pool = redis.asyncio.BlockingConnectionPool(connection_class=_drop_on_readonly(base), **url_options)
    return redis.asyncio.Redis.from_pool(pool)


def sync_client(url=None, *, socket_timeout=None, connect_timeout=None, sentinel_password=None, decode_responses=False):
    """A client for one thread (the watchdog's), with the same failover handling."""
    target, socket_timeout, connect_timeout, sentinel_password = _resolve(
        url, socket_timeout, connect_timeout, sentinel_password
    )
    options = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_keepalive": True,
        "decode_responses": decode_responses,
        "retry": _SyncResend(),
    }
    if target.behind_sentinel:
        sentinel = redis.sentinel.Sentinel(
            target.sentinels,
            sentinel_kwargs=_sentinel_kwargs(socket_timeout, connect_timeout, sentinel_password, is_async=False),
        )
        return sentinel.master_for(
            target.service,
            connection_class=_drop_on_readonly(redis.sentinel.SentinelManagedConnection),
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
        )
    base, url_options = _plain(target, options, is_async=False)
    pool = redis.ConnectionPool(connection_class=_drop_on_readonly(base), **url_options)
    return redis.Redis.from_pool(pool)


def channel_layer_host(
    url=None, *, socket_timeout=None, connect_timeout=None, sentinel_password=None, health_check_interval=10
):
    """The entry for CHANNEL_LAYERS[...]["CONFIG"]["hosts"] (channels_redis 4.3,
    pub/sub or core layer): plain connection arguments for one server, or
    `sentinels` / `master_name` / `sentinel_kwargs` for a Sentinel-managed
    master (channels_redis/utils.py `create_pool`). Either way the
    connections drop on READONLY and send the command once more."""
    target, socket_timeout, connect_timeout, sentinel_password = _resolve(
        url, socket_timeout, connect_timeout, sentinel_password
    )
    options = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": health_check_interval,
        "retry": _AsyncResend(),
    }
    if target.behind_sentinel:
        return {
            "sentinels": list(target.sentinels),
            "master_name": target.service,
            "sentinel_kwargs": _sentinel_kwargs(socket_timeout, connect_timeout, sentinel_password),
            "connection_class": _drop_on_readonly(redis.asyncio.sentinel.SentinelManagedConnection),
            "db": target.db,
            "username": target.username,
            "password": target.password,
            **options,
        }
    base, url_options = _plain(target, options, is_async=True)
    return {**url_options, "connection_class": _drop_on_readonly(base)}


# --- following the master --------------------------------------------------------


def _connections(pool):
    # redis-py keeps no public list of a pool's connections.
    return list(pool._available_connections), list(pool._in_use_connections)


def _elsewhere(connection, address):
    return connection.is_connected and (connection.host, connection.port) != tuple(address)


async def master_address(client):
    """(host, port) of the master the Sentinels name now, or None for a plain
    URL. Raises MasterNotFoundError when no Sentinel names one."""
    pool = client.connection_pool
    if not isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        return None
    return await pool.sentinel_manager.discover_master(pool.service_name)


async def follow_master(client, drop_in_use=False, address=None):
    """Drop this client's connections to any server but the master the
    Sentinels name now (`address`, if the caller asked them already). Idle
    ones close now; ones in use close when they come back to the pool, or now
    with `drop_in_use` (a pub/sub connection is in use for ever: the channel
    layer's needs it). Returns the master's (host, port) when connections
    were dropped, else None (also for a plain URL). Raises
    MasterNotFoundError when no Sentinel names a master."""
    pool = client.connection_pool
    if not isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        return None
    address = tuple(address or await master_address(client))
    pool.master_address = address
    idle, in_use = _connections(pool)
    stale_idle = [c for c in idle if _elsewhere(c, address)]
    stale_used = [c for c in in_use if _elsewhere(c, address)]
    for connection in stale_used:
        connection.mark_for_reconnect()
    closing = stale_idle + (stale_used if drop_in_use else [])
    await asyncio.gather(*(c.disconnect(nowait=True) for c in closing), return_exceptions=True)
    return address if stale_idle or stale_used else None


def follow_master_sync(client, address=None):
    """`follow_master` for a sync client; call it from the thread that uses it."""
    pool = client.connection_pool
    if not isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return None
    address = tuple(address or pool.sentinel_manager.discover_master(pool.service_name))
    pool.proxy.master_address = address
    idle, in_use = _connections(pool)
    stale = [c for c in idle + in_use if _elsewhere(c, address)]
    for connection in stale:
        connection.disconnect()
    return address if stale else None


async def follow_master_layer(layer, address=None):
    """`follow_master` for a channels_redis layer's clients on this event loop.
    The pub/sub layer's subscription connections are dropped at once (redis-py
    subscribes the new connection to every channel again); the core layer's
    close when their blocking read returns. Returns the master's (host, port)
    when connections were dropped, else None."""
    moved = None
    inner = layer._get_layer() if hasattr(layer, "_get_layer") else None
    if inner is not None:  # RedisPubSubChannelLayer: one client per shard
        clients = [shard._redis for shard in inner._shards if shard._redis is not None]
        drop_in_use = True
    else:  # RedisChannelLayer: one client per host
        clients = [layer.connection(index) for index in range(layer.ring_size)]
        drop_in_use = False
    for client in clients:
        moved = await follow_master(client, drop_in_use=drop_in_use, address=address) or moved
    return moved
