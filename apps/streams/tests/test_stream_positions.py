"""A stream's position (epoch, seq) never moves backwards without its epoch
changing: a counter Redis lost starts a new epoch, and a counter that lags
(a failover to a replica that missed the last writes) is raised to what the
publisher last published."""

import json

import pytest

from apps.streams.protocol import epoch_day
from apps.streams.publish import publish_snapshot
from stocktracker.lib import keys
from stocktracker.lib import redis as redis_lib
from stocktracker.lib.state import get_state, reset_state

DAY = "2026-11-27"


async def _publish(n, floor=None):
    return await publish_snapshot("market", {"n": n}, day=DAY, source_ms=n, simulated=True, floor=floor)


def _direct(settings):
    return redis_lib.sync_client(decode_responses=True)


async def test_a_counter_that_redis_lost_starts_a_new_epoch(settings):
    first = await _publish(1)
    second = await _publish(2, floor=first)
    assert second == (first[0], 2) and epoch_day(first[0]) == DAY
    _direct(settings).flushdb()  # Redis restarted without its data
    again = await _publish(3, floor=second)
    assert again[0] != first[0] and again[1] == 1 and epoch_day(again[0]) == DAY
    latest = json.loads(await get_state().latest_get("market"))
    assert (latest["epoch"], latest["seq"], latest["data"]) == (again[0], 1, {"n": 3})


async def test_a_counter_that_lags_is_raised_to_the_publishers_floor(settings):
    position = None
    for n in range(1, 6):
        position = await _publish(n, floor=position)
    assert position[1] == 5
    _direct(settings).hset(keys.seq("market"), "seq", 2)  # a replica that missed three writes
    after = await _publish(6, floor=position)
    assert after == (position[0], 6)
    # Without a floor (another publisher, which saw nothing) the counter goes on from where it is.
    assert (await _publish(7, floor=after)) == (position[0], 7)


async def test_a_floor_from_another_epoch_does_not_raise_the_new_one(settings):
    old = await _publish(1)
    for n in range(2, 10):
        old = await _publish(n, floor=old)
    _direct(settings).delete(keys.seq("market"))
    fresh = await _publish(10, floor=old)
    assert fresh[0] != old[0] and fresh[1] == 1


async def test_a_new_trading_day_keeps_the_incarnation_and_restarts_seq(settings):
    first = await _publish(1)
    next_day = await publish_snapshot("market", {"n": 2}, day="2026-11-28", source_ms=2, simulated=True, floor=first)
    assert next_day[1] == 1 and epoch_day(next_day[0]) == "2026-11-28"
    assert next_day[0].split("~")[1] == first[0].split("~")[1]


@pytest.mark.usefixtures("embedded")
async def test_embedded_a_restarted_process_starts_a_new_epoch():
    first = await _publish(1)
    assert (await _publish(2, floor=first)) == (first[0], 2)
    reset_state()  # the process restarted: its counters are gone
    assert (await _publish(3))[0] != first[0]
