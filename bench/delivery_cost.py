"""Micro-benchmark: the per-socket, per-frame delivery path with and without
the usage/metrics counting (sent_bytes, the fan-out clock).

    DEBUG=true .venv/bin/python -m bench.delivery_cost

The transport is a no-op ASGI `send`, so what is left is our own code on the
path; the difference between the two runs is the cost of the counting.
"""

import asyncio
import os
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stocktracker.settings")
import django

django.setup()

from apps.streams.consumers import Grant, StreamConsumer  # noqa: E402
from apps.streams.protocol import now_ms  # noqa: E402

FRAMES = 200_000


class Uncounted(StreamConsumer):
    """The delivery path as it was before the counting was added."""

    async def _send_frame(self, text, kind="snapshot", size=None):
        if self._backlogged():
            self.pending[kind] = text
            return
        await self.send(text_data=text)
        self.sent += 1

    async def stream_frame(self, message):
        if self.grant is not None and not self.closing:
            await self._send_frame(message["text"], message.get("kind", "snapshot"))


def _consumer(cls):
    async def send(message):
        pass

    consumer = cls()
    consumer.stream = "market"
    consumer.base_send = send
    consumer.grant = Grant(user_id=1, username="u", token_id=1, token_prefix="stk_x")
    consumer.closing = False
    consumer.link = None
    consumer.pending = {}
    consumer.backlogged_since = None
    consumer.sent = consumer.sent_bytes = 0
    return consumer


async def _run(cls, sockets=100):
    consumers = [_consumer(cls) for _ in range(sockets)]
    text = '{"type":"snapshot","stream":"market","seq":1,"data":{}}' + " " * 20_000
    started = time.perf_counter()
    for frame in range(FRAMES // sockets):
        message = {
            "type": "stream.frame",
            "kind": "snapshot",
            "text": text,
            "published_ms": now_ms() + frame,
            "bytes": len(text),
        }
        for consumer in consumers:
            await consumer.stream_frame(message)
    return (time.perf_counter() - started) / FRAMES * 1e6


def main():
    results = {}
    for _ in range(3):
        for cls in (Uncounted, StreamConsumer):
            results.setdefault(cls.__name__, []).append(asyncio.run(_run(cls)))
    base, counted = min(results["Uncounted"]), min(results["StreamConsumer"])
    print(
        f"per socket per frame: without counting {base:.3f} µs, with counting {counted:.3f} µs, "
        f"cost {counted - base:.3f} µs"
    )


if __name__ == "__main__":
    main()
