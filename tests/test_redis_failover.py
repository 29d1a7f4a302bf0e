"""Clients built by stocktracker.lib.redis keep working across a Sentinel
failover: a real master, replica and three Sentinels on loopback
(tests/cluster.py), `SENTINEL FAILOVER`, and a demoted master that
answers READONLY."""

import asyncio
import signal
import time

import pytest
import redis
from channels_redis.pubsub import RedisPubSubChannelLayer

from stocktracker.lib import redis as redis_lib
from tests.sentinel_cluster import SentinelCluster

TIMEOUTS = {"socket_timeout": 2.0, "connect_timeout": 2.0, "sentinel_password": ""}


@pytest.fixture
def cluster(tmp_path):
    with SentinelCluster(tmp_path) as found:
        yield found


async def test_writes_land_on_the_new_master_once_the_client_follows_it(cluster):
    client = redis_lib.async_client(cluster.url, **TIMEOUTS)
    try:
        await client.set("before", 1)
        old = cluster.master
        new = cluster.failover()

        assert await redis_lib.follow_master(client) == new
        await client.set("after", 2)

        assert cluster.data(new[1]).mget("before", "after") == ["1", "2"]
        assert cluster.data(old[1]).get("after") is None
    finally:
        await client.aclose()


async def test_a_write_refused_with_readonly_is_sent_again_to_the_new_master(cluster):
    client = redis_lib.async_client(cluster.url, **TIMEOUTS)
    lock = client.lock("stk:feed:leader", timeout=15, thread_local=False)
    lease = client.register_script("redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2]) return redis.call('ZCARD', KEYS[1])")
    try:
        assert await lock.acquire(blocking=False)
        assert await lock.reacquire()
        assert await lease(keys=["lease"], args=[1, "a"]) == 1
        await client.set("n", 1)
        old = cluster.master
        new = cluster.failover()
        # The old master becomes a replica but keeps this client's connections:
        # every write on them is answered READONLY.
        cluster.demote(old, new)

        started = time.monotonic()
        assert await client.incr("n") == 2
        assert await lock.reacquire()
        assert await lock.owned()
        assert await lease(keys=["lease"], args=[2, "b"]) == 2
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr("n").expire("n", 60)
            assert (await pipe.execute())[0] == 3
        assert time.monotonic() - started < 1.0

        assert cluster.data(new[1]).get("n") == "3"
        assert cluster.data(old[1]).execute_command("ROLE")[0] == "slave"
    finally:
        await client.aclose()


def test_the_watchdog_thread_client_follows_a_failover_too(cluster):
    client = redis_lib.sync_client(cluster.url, **TIMEOUTS)
    try:
        assert client.ping()
        client.set("n", 1)
        old = cluster.master
        new = cluster.failover()

        assert redis_lib.follow_master_sync(client) == new
        assert client.incr("n") == 2
        assert cluster.data(new[1]).get("n") == "2"

        newer = cluster.failover()  # back to `old`, once the Sentinels made it a replica
        assert newer == old
        cluster.demote(new, newer)
        assert client.incr("n") == 3  # READONLY from `new`, sent again to `newer`
        assert cluster.data(newer[1]).get("n") == "3"
    finally:
        client.close()


class Listener:
    """Two pub/sub channel layers built from channel_layer_host(): one
    subscribed to a group (a web process), one sending to it (the worker)."""

    def __init__(self, url):
        host = redis_lib.channel_layer_host(url, **TIMEOUTS)
        self.receiver = RedisPubSubChannelLayer(hosts=[host], prefix="stk")
        self.sender = RedisPubSubChannelLayer(hosts=[host], prefix="stk")
        self.heard = asyncio.Queue()
        self.task = None

    async def __aenter__(self):
        channel = await self.receiver.new_channel("test.")
        await self.receiver.group_add("board", channel)

        async def listen():
            while True:
                self.heard.put_nowait((await self.receiver.receive(channel))["n"])

        self.task = asyncio.ensure_future(listen())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await self.receiver.flush()
        await self.sender.flush()

    async def arrives(self, n, within):
        """Sends n to the group until it is heard (pub/sub keeps nothing for
        a subscriber that is not there); returns when, or None."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            await self.sender.group_send("board", {"type": "t", "n": n})
            try:
                while await asyncio.wait_for(self.heard.get(), 0.2) != n:
                    pass
                return time.monotonic()
            except TimeoutError:
                continue
        return None


async def test_the_channel_layer_hears_the_new_master_once_it_follows_it(cluster):
    async with Listener(cluster.url) as layers:
        assert await layers.arrives(0, within=5)
        new = cluster.failover()
        # Until the Sentinels turn the old master into a replica (seconds
        # later), the subscription is still on it: the layer must follow them.
        assert await redis_lib.follow_master_layer(layers.receiver) == new
        assert await redis_lib.follow_master_layer(layers.sender) == new
        # channels_redis's receive task sleeps 1 s after the dropped connection's error.
        started = time.monotonic()
        arrived = await layers.arrives(1, within=5)
        assert arrived and arrived - started < 2.0


async def test_the_channel_layer_subscribes_again_once_the_sentinels_demote_the_old_master(cluster):
    async with Listener(cluster.url) as layers:
        assert await layers.arrives(0, within=5)
        old = cluster.master
        new = cluster.failover()
        # The Sentinels reconfigure the old master and drop its clients; the
        # layer reconnects through them and subscribes again, on its own.
        await asyncio.get_running_loop().run_in_executor(None, cluster.wait_demoted, old)
        assert await layers.arrives(1, within=10)
        with cluster.data(new[1]) as master:
            assert master.execute_command("PUBSUB", "NUMSUB", "stk__group__board")[1] == 1


async def test_a_burst_beyond_the_pool_waits_for_a_connection_instead_of_failing(cluster):
    client = redis_lib.async_client(cluster.url, max_connections=2, **TIMEOUTS)
    try:
        # Each BLPOP holds its connection 0.2 s: 8 of them through 2 connections take 0.8 s.
        results = await asyncio.gather(*(client.blpop(["nothing"], timeout=0.2) for _ in range(8)))
        assert results == [None] * 8
    finally:
        await client.aclose()


async def test_a_hung_sentinel_costs_one_timeout_before_the_next_one_is_asked(cluster):
    first = ("127.0.0.1", cluster.sentinel_ports[0])
    cluster.signal(first, signal.SIGSTOP)
    client = redis_lib.async_client(cluster.url, **{**TIMEOUTS, "socket_timeout": 0.5})
    try:
        started = time.monotonic()
        assert await client.set("k", 1)
        assert time.monotonic() - started < 1.5
    finally:
        cluster.signal(first, signal.SIGCONT)
        await client.aclose()


async def test_sentinels_with_a_password_of_their_own(tmp_path):
    with SentinelCluster(tmp_path, sentinel_password="sentinel secret") as cluster:
        client = redis_lib.async_client(cluster.url, **{**TIMEOUTS, "sentinel_password": "sentinel secret"})
        try:
            assert await client.set("k", 1)
        finally:
            await client.aclose()
        client = redis_lib.async_client(cluster.url, **TIMEOUTS)
        try:
            with pytest.raises(redis.exceptions.ConnectionError, match="No master found"):
                await client.set("k", 1)
        finally:
            await client.aclose()
