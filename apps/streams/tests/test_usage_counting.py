"""Sockets count their own deliveries; the process flushes per-token usage in batches."""

import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async

from apps.accounts.models import TokenUsage
from apps.streams import metrics
from apps.streams.accounting import accounting

from .conftest import closed_with, communicator, frame, publish

pytestmark = pytest.mark.django_db(transaction=True)


def _value(counter, *labels):
    return counter.labels(*labels)._value.get()


async def test_a_sockets_messages_and_bytes_reach_its_tokens_usage_with_no_write_per_message(owner_token):
    token, raw = owner_token
    delivered = _value(metrics.DELIVERED, "market")
    await publish(data={"n": 0})
    comm = communicator(token=raw)
    await comm.connect()
    texts = []
    assert (await frame(comm))["type"] == "welcome"
    texts.append((await comm.receive_output(2))["text"])  # the latest snapshot
    for n in range(1, 21):
        await publish(data={"n": n, "name": "Hòa Phát"})  # non-ASCII: bytes, not characters
        texts.append((await comm.receive_output(2))["text"])
    await comm.disconnect()
    assert not await sync_to_async(TokenUsage.objects.exists)()  # nothing written per message
    assert await accounting().flush() == 1
    usage = await sync_to_async(TokenUsage.objects.get)(token=token)
    assert usage.connections == 1
    assert usage.peak_concurrent == 1
    assert usage.messages == 21
    assert usage.bytes == sum(len(text.encode()) for text in texts)
    assert _value(metrics.DELIVERED, "market") - delivered == 21


async def test_refusals_of_a_known_token_count_as_its_rejections(owner, issue):
    token, raw = await sync_to_async(issue)(max_connections=1, streams=["index"])
    first = communicator("/ws/index", token=raw)
    await first.connect()
    assert (await frame(first))["type"] == "welcome"
    second = communicator("/ws/index", token=raw, client=("10.0.0.2", 5000))
    await second.connect()
    code, _ = await closed_with(second)
    assert code == 4100
    forbidden = communicator("/ws/market", token=raw)
    await forbidden.connect()
    code, _ = await closed_with(forbidden)
    assert code == 4003
    await first.disconnect()
    await accounting().flush()
    usage = await sync_to_async(TokenUsage.objects.get)(token=token)
    assert (usage.connections, usage.rejections) == (1, 2)


async def test_frames_held_back_from_a_slow_client_are_not_counted_as_sent(owner_token, monkeypatch):
    from apps.streams import delivery
    from apps.streams.admission import admission

    written = []

    class Clock:
        def sent(self, stream, published_ms):
            written.append(published_ms)

    class SlowLink:
        """A daphne link whose client stopped reading until `backlog` drops."""

        def __init__(self):
            self.backlog_bytes = 10**9
            self.frames = []

        def backlog(self):
            return self.backlog_bytes

        def write(self, frame):
            self.frames.append(json.loads(frame[4:] if frame[1] == 126 else frame[2:]))
            return True

        def offer(self, frame, limit):
            if limit is not None and self.backlog_bytes > limit:
                return -1
            return 1 if self.write(frame) else 0

        def ready_socket(self):
            return None  # never the direct path: every frame goes through `offer`

    monkeypatch.setattr(delivery, "fanout", Clock())
    comm = communicator(token=owner_token[1])
    await comm.connect()
    await frame(comm)
    (consumer,) = list(admission().sockets)
    consumer.subscriber.link = link = SlowLink()  # the client stopped reading
    consumer.subscriber.backlogged_since = time.monotonic()
    await publish(data={"n": 1})
    await asyncio.sleep(0.3)
    assert link.frames == [] and written == [] and consumer.sent == 0
    link.backlog_bytes = 0  # it caught up
    await publish(data={"n": 2})
    await asyncio.sleep(0.3)
    (latest,) = link.frames
    assert latest["data"] == {"n": 2}  # conflated: only the newest snapshot
    assert written == [latest["published_ms"]] and consumer.sent == 1
    consumer.subscriber.link = None
    await comm.disconnect()


async def test_a_tokens_peak_counts_its_sockets_on_every_process(owner_token):
    from django.conf import settings

    from stocktracker.lib.state import get_state

    token, raw = owner_token
    # Another process holds two sockets of the token: their leases are all this process sees of them.
    for conn_id in ("elsewhere-1", "elsewhere-2"):
        assert not await get_state().lease_acquire(conn_id, [(f"token:{token.pk}", None)], settings.WS_LEASE_TTL)
    comm = communicator(token=raw)
    await comm.connect()
    assert (await frame(comm))["type"] == "welcome"
    await accounting().flush()
    await comm.disconnect()
    usage = await sync_to_async(TokenUsage.objects.get)(token=token)
    assert usage.peak_concurrent == 3
