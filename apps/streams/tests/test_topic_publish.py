"""A topic's publish: the delta and the snapshot numbered together, the
snapshot stored, the delta kept for resume and sent to the topic's group;
the first frame of an epoch is its snapshot; the window never spans a gap."""

import asyncio
import json

import pytest
import redis
from channels.layers import get_channel_layer

from apps.streams.protocol import epoch_day
from apps.streams.publish import publish_topic
from stocktracker.lib import keys
from stocktracker.lib.state import get_state

DAY = "2026-11-27"
TOPIC = "board:VN30"


async def _publish(snapshot, delta, floor=None, topic=TOPIC):
    return await publish_topic(topic, snapshot, delta, day=DAY, source_ms=1, simulated=True, floor=floor)


async def _window(topic=TOPIC):
    return [json.loads(text) for text in await get_state().topic_window(topic)]


@pytest.fixture(params=["redis", "embedded"])
def mode(request):
    if request.param == "embedded":
        request.getfixturevalue("embedded")
    return request.param


async def test_deltas_follow_the_first_snapshot_and_apply_to_it(mode):
    layer = get_channel_layer()
    channel = await layer.new_channel("test.")
    await layer.group_add(keys.topic_group(TOPIC), channel)
    first = await _publish({"FPT": {"last": 1}, "HPG": {"last": 2}}, None)
    sent = await asyncio.wait_for(layer.receive(channel), 2)
    assert sent["kind"] == "snapshot" and json.loads(sent["text"])["seq"] == 1
    second = await _publish({"FPT": {"last": 3}, "HPG": {"last": 2}}, {"FPT": {"last": 3}}, floor=first)
    sent = await asyncio.wait_for(layer.receive(channel), 2)
    delta = json.loads(sent["text"])
    assert (sent["kind"], delta["type"], delta["topic"]) == ("delta", "delta", TOPIC)
    assert (delta["epoch"], delta["seq"], delta["prev"]) == (first[0], 2, 1) == (second[0], second[1], 1)
    assert delta["data"] == {"FPT": {"last": 3}} and epoch_day(delta["epoch"]) == DAY
    snapshot = json.loads(await get_state().topic_snapshot(TOPIC))
    assert (snapshot["type"], snapshot["seq"], snapshot["data"]) == (
        "snapshot",
        2,
        {"FPT": {"last": 3}, "HPG": {"last": 2}},
    )
    assert [d["seq"] for d in await _window()] == [2]


async def test_the_window_keeps_the_newest_deltas(mode):
    position = await _publish({"n": 0}, None, topic="status")
    for n in range(1, 8):
        position = await publish_topic(
            "status", {"n": n}, {"n": n}, day=DAY, source_ms=n, simulated=True, floor=position
        )
    assert [d["seq"] for d in await _window("status")] == [2, 3, 4, 5, 6, 7, 8]
    for n in range(8, 700):
        position = await publish_topic(
            "status", {"n": n}, {"n": n}, day=DAY, source_ms=n, simulated=True, floor=position
        )
    window = await _window("status")
    assert len(window) == 600 and window[-1]["seq"] == position[1] and window[0]["seq"] == position[1] - 599


async def test_a_lost_counter_starts_a_new_epoch_with_an_empty_window(settings):
    first = await _publish({"a": 1}, None)
    second = await _publish({"a": 2}, {"a": 2}, floor=first)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(keys.topic_seq(TOPIC))  # the counter is gone (a flush, a replica that never had it)
    third = await _publish({"a": 3}, {"a": 3}, floor=second)
    assert third[0] != second[0] and third[1] == 1
    assert await _window() == []
    snapshot = json.loads(await get_state().topic_snapshot(TOPIC))
    assert (snapshot["epoch"], snapshot["seq"], snapshot["data"]) == (third[0], 1, {"a": 3})


async def test_a_counter_raised_to_the_floor_empties_the_window(settings):
    position = await _publish({"a": 0}, None)
    for n in range(1, 5):
        position = await _publish({"a": n}, {"a": n}, floor=position)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.hset(keys.topic_seq(TOPIC), "seq", 2)  # a replica that missed the last writes
    after = await _publish({"a": 9}, {"a": 9}, floor=position)
    assert after == (position[0], position[1] + 1)
    assert await _window() == []  # the deltas of the gap are gone: nothing resumes across it


async def test_a_publish_without_a_delta_restarts_the_window(mode):
    position = await _publish({"a": 0}, None)
    position = await _publish({"a": 1}, {"a": 1}, floor=position)
    assert len(await _window()) == 1
    await _publish({"a": 2}, None, floor=position)  # a new leader, with nothing to diff against
    assert await _window() == []
