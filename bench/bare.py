"""The bench's yardstick: a bare `websockets` broadcast server for the same frames.

    python bench/bare.py --port 8765

No auth, no limits, no Channels consumer: per stream it holds one channel-layer
subscription (the same PubSub layer and frames the project's web process
gets) and hands each frame to `websockets.broadcast()` for that stream's
sockets. A socket gets `welcome` on connect (what bench/client.py waits for).
It keeps one lease in each stream's subscriber set, so the feed publishes as
it does for the project. Compression off, as for the project (daphne never
negotiates it); websockets' own keepalive pings stay at their defaults.
"""

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stocktracker.settings")

import django

django.setup()

from channels.layers import get_channel_layer  # noqa: E402
from websockets.asyncio.server import broadcast, serve  # noqa: E402

from apps.streams import protocol  # noqa: E402
from apps.streams.publish import FRAME, wake_feed  # noqa: E402
from stocktracker.lib import keys  # noqa: E402
from stocktracker.lib.state import get_state  # noqa: E402

clients = {stream: set() for stream in protocol.STREAMS}


async def handler(ws):
    stream = ws.request.path.strip("/").split("/")[-1]
    if stream not in clients:
        await ws.close(4004)
        return
    await ws.send(protocol.welcome_frame(stream, heartbeat_s=30, limits={}))
    clients[stream].add(ws)
    try:
        await ws.wait_closed()
    finally:
        clients[stream].discard(ws)


async def pump(layer, stream):
    channel = await layer.new_channel()
    await layer.group_add(keys.stream_group(stream), channel)
    while True:
        message = await layer.receive(channel)
        if message.get("type") == FRAME:
            broadcast(clients[stream], message["text"])


async def subscribed():
    """The feed publishes only streams with a subscriber lease: hold one each."""
    state = get_state()
    while True:
        for stream in protocol.STREAMS:
            await state.lease_acquire(f"bare-{os.getpid()}", [(keys.subscribers(stream), None)], 90)
        await wake_feed()
        await asyncio.sleep(30)


async def main(port):
    layer = get_channel_layer()
    tasks = [asyncio.ensure_future(pump(layer, stream)) for stream in protocol.STREAMS]
    tasks.append(asyncio.ensure_future(subscribed()))
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=4096):
        print("READY", flush=True)
        await asyncio.gather(*tasks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
