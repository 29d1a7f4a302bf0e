"""The worker behind Sentinel (a real master, replica and three Sentinels on
loopback): after SENTINEL FAILOVER it moves to the new master before the
Sentinels demote the old one, renews its lock there at once and publishes
every stream again, past anything it published before."""

import asyncio
import json

import pytest
from django.conf import settings

from apps.feed.leadership import LOCK_KEY
from stocktracker.lib import keys
from tests.sentinel_cluster import behind_sentinel

from .conftest import subscribe
from .test_cycle import simulator_feed


@pytest.fixture
async def cluster(tmp_path, settings):
    async with behind_sentinel(tmp_path, settings) as found:
        yield found


async def test_the_worker_moves_to_the_new_master_renews_its_lock_and_publishes_again(cluster, clock):
    await subscribe("index")
    feed = simulator_feed(clock, elect=True)
    assert await feed.cycle() == {"index": 1}
    assert await feed.cycle() == {}  # nothing changed: nothing published
    old = cluster.master
    new = await asyncio.to_thread(cluster.failover)
    await asyncio.sleep(2)  # the lock's time to live runs down on the new master too

    stop = asyncio.Event()
    following = asyncio.ensure_future(feed._follow(stop))
    try:
        await asyncio.wait_for(feed.wake.wait(), 5)  # it moved, and wakes the loop
        with cluster.data(new[1]) as master:
            for _ in range(20):  # the lock is renewed right after the move
                if master.pttl(LOCK_KEY) > (settings.FEED_LEADER_TTL - 1) * 1000:
                    break
                await asyncio.sleep(0.1)
            assert master.pttl(LOCK_KEY) > (settings.FEED_LEADER_TTL - 1) * 1000
        # The same data again, numbered past what clients already have, on the new master.
        assert await feed.cycle() == {"index": 2}
        with cluster.data(new[1]) as master:
            assert json.loads(master.get(keys.latest("index")))["seq"] == 2
        assert cluster.role(old[1]) == "master"  # all this before the Sentinels demoted the old one
    finally:
        stop.set()
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
