"""A web process behind Sentinel (a real master, replica and three Sentinels
on loopback): after SENTINEL FAILOVER its watchdog moves every connection of
the process to the new master before the Sentinels demote the old one (which
takes writes meanwhile, and loses them); and a demoted master that answers
READONLY costs the shared state, the publish path and the leader lock nothing."""

import asyncio

import pytest

from apps.streams.publish import publish_snapshot
from apps.streams.watchdog import Watchdog
from stocktracker.lib import keys
from stocktracker.lib.locks import get_lock
from stocktracker.lib.state import get_state
from tests.sentinel_cluster import behind_sentinel

DAY = "2026-11-27"


@pytest.fixture
async def cluster(tmp_path, settings):
    async with behind_sentinel(tmp_path, settings) as found:
        yield found


def clients_of_ours(cluster, address):
    """Connections this process holds to `address`: all but the Sentinels',
    the replication link and the one asking."""
    with cluster.data(address[1]) as client:
        return [
            c
            for c in client.client_list()
            if not c["name"].startswith("sentinel-") and "S" not in c["flags"] and c["cmd"] != "client|list"
        ]


class FakeConsumer:
    def __init__(self):
        self.lost = 0

    async def backend_lost(self):
        self.lost += 1


async def test_a_watchdog_check_moves_the_process_to_the_new_master_before_the_old_one_is_demoted(cluster):
    dog, consumer = Watchdog(), FakeConsumer()
    dog.on_lost.append(consumer.backend_lost)
    dog._start_probe_receiver()
    await asyncio.wait_for(dog.probe_ready.wait(), 5)
    await dog.check()
    assert dog.healthy
    old = cluster.master
    assert await asyncio.to_thread(clients_of_ours, cluster, old)  # the state, the layer, the thread

    new = await asyncio.to_thread(cluster.failover)
    await dog.check()

    # The old master still takes writes (the Sentinels demote it seconds later),
    # and nothing of this process writes there any more.
    assert cluster.role(old[1]) == "master"
    assert await asyncio.to_thread(clients_of_ours, cluster, old) == []
    assert await get_state().lease_acquire("sock-1", [(keys.subscribers("market"), None)], 60) == 0
    with cluster.data(new[1]) as master:
        assert master.zscore(keys.lease_set(keys.subscribers("market")), "sock-1") is not None
    # The layer subscribes again on the new master (channels_redis waits 1 s
    # after a dropped connection): the next check's probe comes back from there.
    await asyncio.sleep(1.5)
    await dog.check()
    assert dog.healthy and dog.failures == 0 and consumer.lost == 0
    assert cluster.role(old[1]) == "master"
    dog.probe_task.cancel()


async def test_a_demoted_master_answering_readonly_costs_the_state_the_publish_and_the_lock_nothing(cluster):
    lock = get_lock(keys.FEED_LEADER, 15)
    assert await lock.acquire()
    first = await publish_snapshot("market", {"n": 1}, day=DAY, source_ms=1, simulated=True, fence=lock.fence())
    assert await get_state().lease_acquire("sock-1", [(keys.subscribers("market"), None)], 60) == 0
    old = cluster.master
    new = await asyncio.to_thread(cluster.failover)
    # A replica now, but this process's connections stay open: writes on them get READONLY.
    await asyncio.to_thread(cluster.demote, old, new)

    second = await publish_snapshot(
        "market", {"n": 2}, day=DAY, source_ms=2, simulated=True, fence=lock.fence(), floor=first
    )
    assert second == (first[0], first[1] + 1)
    assert await lock.extend() and await lock.owned()
    assert await get_state().lease_acquire("sock-2", [(keys.subscribers("market"), None)], 60) == 0
    assert await get_state().lease_counts([keys.subscribers("market")]) == [2]
    with cluster.data(new[1]) as master:
        assert '"n":2' in master.get(keys.latest("market"))
