"""A TCP proxy on loopback between the app and Redis (or PostgreSQL), for fault tests.

    python -m apps.streams.tests.redis_proxy TARGET_PORT [--delay SECONDS]

prints `listening <port>` once it accepts connections. Every chunk is
forwarded `--delay` seconds after it was read, in each direction and in
order (a slow network: a round trip costs twice the delay). SIGUSR1 stalls
every connection open at that moment that has carried a SUBSCRIBE (the
channel layer's pub/sub connections): they stay established, and nothing
more goes through them either way. SIGUSR2 lets them go again. SIGSTOP of
the whole proxy stalls every connection, and new connects complete at the
TCP level but are never answered.
"""

import argparse
import asyncio
import signal
import time


class Link:
    """One client connection and its upstream."""

    def __init__(self, delay):
        self.delay = delay
        self.subscriber = False
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def pump(self, reader, writer, from_client):
        queue = asyncio.Queue()

        async def forward():
            while True:
                due, chunk = await queue.get()
                if chunk is None:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await self.flowing.wait()
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(forward())
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if from_client and b"SUBSCRIBE" in chunk.upper():
                    self.subscriber = True
                queue.put_nowait((time.monotonic() + self.delay, chunk))
        except OSError:
            pass
        queue.put_nowait((0, None))
        try:
            await sender
        except OSError:
            pass


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target_port", type=int)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    links = set()

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", args.target_port)
        except OSError:
            client_writer.close()
            return
        link = Link(args.delay)
        links.add(link)
        try:
            await asyncio.gather(
                link.pump(client_reader, up_writer, True),
                link.pump(up_reader, client_writer, False),
                return_exceptions=True,
            )
        finally:
            links.discard(link)

    def stall():
        for link in links:
            if link.subscriber:
                link.flowing.clear()

    def resume():
        for link in links:
            link.flowing.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, stall)
    loop.add_signal_handler(signal.SIGUSR2, resume)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
