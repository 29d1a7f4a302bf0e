"""On connect: welcome, the latest snapshot at once, a `feed` frame when the
feed moved on since; then every update, forwarded as the publisher's text."""

import pytest
from channels import consumer as channels_consumer
from channels.layers import get_channel_layer

from apps.streams.protocol import epoch_day
from apps.streams.publish import publish_feed_state

from .conftest import communicator, frame, publish

pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_sends_welcome_then_the_latest_snapshot_then_every_update(owner_token):
    await publish(data={"n": 1})
    await publish(data={"n": 2})
    comm = communicator(token=owner_token[1])
    await comm.connect()
    assert (await frame(comm))["type"] == "welcome"
    latest = await frame(comm)
    assert latest["seq"] == 2 and latest["data"] == {"n": 2}
    for n in (3, 4):
        await publish(data={"n": n})
        update = await frame(comm)
        assert update["seq"] == n and epoch_day(update["epoch"]) == "2026-11-27"
        assert {"published_ms", "source_ms", "feed"} <= update.keys()
    await comm.disconnect()


async def test_it_forwards_the_published_text_unchanged(owner_token):
    comm = communicator(token=owner_token[1])
    await comm.connect()
    await frame(comm)
    text = '{"type":"snapshot","stream":"market","seq":9,"odd spacing":  true}'
    await get_channel_layer().group_send("stream.market", {"type": "stream.frame", "kind": "snapshot", "text": text})
    assert await comm.receive_from(2) == text
    await comm.disconnect()


async def test_it_sends_the_feed_state_when_it_differs_from_the_snapshot(owner_token):
    await publish(feed="live")
    await publish_feed_state("stale", detail="SSI timeout")
    comm = communicator(token=owner_token[1])
    await comm.connect()
    await frame(comm)
    assert (await frame(comm))["feed"] == "live"
    feed = await frame(comm)
    assert feed["type"] == "feed" and feed["state"] == "stale" and feed["detail"] == "SSI timeout"
    await comm.disconnect()


async def test_it_sends_no_feed_frame_when_the_snapshot_is_current(owner_token):
    await publish_feed_state("live")
    await publish(feed="live")
    comm = communicator(token=owner_token[1])
    await comm.connect()
    await frame(comm)
    await frame(comm)
    assert await comm.receive_nothing(0.3)
    await comm.disconnect()


async def test_the_first_subscriber_of_a_stream_wakes_the_feed(owner_token, embedded):
    layer = get_channel_layer()
    first = communicator(token=owner_token[1])
    await first.connect()
    await frame(first)
    assert await layer.receive("feed-wake") == {"type": "feed.wake"}
    second = communicator(token=owner_token[1])
    await second.connect()
    await frame(second)
    assert layer.channels.get("feed-wake") is None or layer.channels["feed-wake"].empty()
    await first.disconnect()
    await second.disconnect()


async def test_broadcast_frames_skip_the_per_message_database_cleanup(owner_token, monkeypatch):
    calls = []

    async def counting():
        calls.append(1)

    monkeypatch.setattr(channels_consumer, "aclose_old_connections", counting)
    comm = communicator(token=owner_token[1])
    await comm.connect()
    await frame(comm)
    before = len(calls)
    for n in range(5):
        await publish(data={"n": n})
        await frame(comm)
    assert len(calls) == before
    await comm.disconnect()


@pytest.mark.parametrize("state", ["live", "stale", "down", "closed"])
def test_the_feed_state_of_a_snapshot_is_read_without_parsing_its_data(state, monkeypatch):
    import json

    from apps.streams import protocol

    data = {"feed": "decoy", "rows": [{"feed": '"feed":"x"'}] * 3}
    text = protocol.snapshot_frame(
        "market", epoch="2026-11-27", seq=1, published_ms=1, source_ms=1, feed=state, data=data, simulated=False
    )
    monkeypatch.setattr(protocol.json, "loads", lambda *a, **k: pytest.fail("parsed the whole frame"))
    assert protocol.snapshot_feed(text) == state
    monkeypatch.undo()
    assert protocol.snapshot_feed('{"type":"snapshot","data":{},"feed":"stale"}') == "stale"  # other shapes parse
    assert protocol.snapshot_feed("not json") is None
    assert json.loads(text)["feed"] == state


async def test_a_socket_that_joins_between_a_frames_store_and_its_send_does_not_make_it_late_for_the_others(
    owner_token, monkeypatch
):
    first = communicator(token=owner_token[1])
    await first.connect()
    assert (await frame(first))["type"] == "welcome"
    await publish(data={"n": 1})
    assert (await frame(first))["seq"] == 1
    layer = get_channel_layer()
    send, held = layer.group_send, []

    async def hold(group, message):
        held.append((group, message))

    monkeypatch.setattr(layer, "group_send", hold)
    await publish(data={"n": 2})  # stored as the latest; its send still on its way
    monkeypatch.setattr(layer, "group_send", send)
    second = communicator(token=owner_token[1])
    await second.connect()
    assert (await frame(second))["type"] == "welcome"
    assert (await frame(second))["seq"] == 2  # with its welcome
    for group, message in held:
        await send(group, message)
    assert (await frame(first))["seq"] == 2  # not dropped as late
    assert await second.receive_nothing(0.3)  # not sent twice
    await publish(data={"n": 3})
    assert (await frame(first))["seq"] == 3 and (await frame(second))["seq"] == 3
    await first.disconnect()
    await second.disconnect()
