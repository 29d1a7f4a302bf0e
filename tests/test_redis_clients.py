"""stocktracker.lib.redis with one server (a plain REDIS_URL), and how it reads
a Sentinel URL. Failover behind Sentinel: tests/test_redis_failover.py."""

import asyncio
import os
import shutil
import subprocess
import tempfile
import time

import pytest
import redis
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from stocktracker.lib import redis as redis_lib
from tests.sentinel_cluster import SentinelCluster

TIMEOUTS = {"socket_timeout": 2.0, "connect_timeout": 2.0, "sentinel_password": ""}


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database():
    target = redis_lib.parse_url("redis+sentinel://:s%40cret@10.0.0.1:26380,10.0.0.2,[fd00::3]:5000/board/2")
    assert target.behind_sentinel
    assert target.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("fd00::3", 5000))
    assert (target.service, target.db, target.username, target.password) == ("board", 2, None, "s@cret")
    assert "s@cret" not in repr(target) and "s%40cret" not in str(target)

    acl = redis_lib.parse_url("redis+sentinel://app:pw@sentinel-1/board")
    assert (acl.username, acl.password, acl.db, acl.sentinels) == ("app", "pw", 0, (("sentinel-1", 26379),))
    assert not redis_lib.parse_url("rediss://:pw@redis.example:6380/1").behind_sentinel


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:pw@h:1",  # no service
        "redis+sentinel://:pw@/svc",  # no Sentinel
        "redis+sentinel://:pw@h:0/svc",
        "redis+sentinel://:pw@h:x/svc",
        "redis+sentinel://:pw@fd00::1:26379/svc",  # IPv6 without brackets
        "redis+sentinel://:pw@h/svc/db1",
        "redis+sentinel://:pw@h/svc/1/2",
        "redis+sentinel://:pw@h/svc?socket_timeout=1",
        "rediss+sentinel://:pw@h/svc",
        "http://:pw@h",
        "redis://:pw@h:port/0",
    ],
)
def test_a_malformed_url_is_refused_without_showing_its_password(url):
    with pytest.raises(ValueError) as refused:
        redis_lib.parse_url(url)
    assert "pw" not in str(refused.value)
    assert "pw" not in redis_lib.redact(url)


async def test_a_burst_beyond_the_pool_waits_for_a_connection_instead_of_failing():
    client = redis_lib.async_client(settings.REDIS_URL, max_connections=2, **TIMEOUTS)
    try:
        # Each BLPOP holds its connection 0.2 s: 8 of them through 2 connections take 0.8 s.
        results = await asyncio.gather(*(client.blpop(["nothing"], timeout=0.2) for _ in range(8)))
        assert results == [None] * 8
    finally:
        await client.aclose()


@pytest.fixture
def pair(tmp_path):
    with SentinelCluster(tmp_path, sentinels=0) as found:
        yield found


async def test_a_server_that_turned_replica_fails_calls_as_a_lost_connection_until_it_is_master_again(pair):
    master, replica = pair.data_ports
    client = redis_lib.async_client(f"redis://127.0.0.1:{master}/0", **TIMEOUTS)
    try:
        assert await client.incr("n") == 1
        assert await client.execute_command("WAIT", 1, 2000) == 1  # the replica has it too
        with pair.data(replica) as promoted:
            promoted.execute_command("REPLICAOF", "NO", "ONE")
        pair.demote(("127.0.0.1", master), ("127.0.0.1", replica))
        pair.wait_demoted(("127.0.0.1", master))

        # A connection error (callers answer 1013), not a reply to act on; and
        # the connection is closed, so the next call starts afresh.
        with pytest.raises(redis.exceptions.ConnectionError, match="READONLY"):
            await client.incr("n")
        assert not any(c.is_connected for c in client.connection_pool._available_connections)

        with pair.data(master) as server:
            server.execute_command("REPLICAOF", "NO", "ONE")
        assert await client.incr("n") == 2
    finally:
        await client.aclose()


def test_the_sync_client_reads_a_plain_url_with_the_same_timeouts():
    client = redis_lib.sync_client(settings.REDIS_URL, **{**TIMEOUTS, "socket_timeout": 0.3})
    try:
        assert client.ping()
        with pytest.raises(redis.exceptions.TimeoutError):
            client.blpop(["nothing"], timeout=1)  # the reply takes 1 s, longer than the socket timeout
    finally:
        client.close()


@pytest.fixture
def unix_socket_server():
    folder = tempfile.mkdtemp(prefix="stk-", dir="/tmp")  # a socket path must stay short
    path = os.path.join(folder, "redis.sock")
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", path, "--save", "", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"unix://{path}?db=0"
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_unix_socket_url_serves_the_state_client_the_thread_client_and_the_channel_layer(unix_socket_server):
    url = unix_socket_server
    client = redis_lib.async_client(url, **TIMEOUTS)
    thread_client = redis_lib.sync_client(url, **TIMEOUTS)
    layer = RedisPubSubChannelLayer(hosts=[redis_lib.channel_layer_host(url, **TIMEOUTS)], prefix="stk")
    try:
        assert await client.incr("n") == 1
        assert thread_client.incr("n") == 2
        channel = await layer.new_channel("test.")
        await layer.send(channel, {"type": "t", "n": 3})
        assert (await asyncio.wait_for(layer.receive(channel), 2))["n"] == 3
    finally:
        await client.aclose()
        thread_client.close()
        await layer.flush()
