"""Measure one feed cycle: upstream requests and CPU time, for SSI (against the
fake server) and for the simulator, with all three streams subscribed.

    python scripts/with_services.py -- .venv/bin/python -m apps.feed.tests.cycle_cost

CPU is `time.thread_time()` of the event-loop thread only: the fake SSI
server's threads are not counted. Publishing goes to the real Redis; Redis
commands per cycle are the server's `total_commands_processed` (including the
channel layer's publishes and the commands scripts run), less the INFO calls
that read it; round trips are the commands (or pipelines) this process sent.
"""

import asyncio
import os
import time

ROUND_TRIPS = [0]


def count_round_trips():
    from redis.asyncio.connection import AbstractConnection

    send = AbstractConnection.send_packed_command

    async def counted(self, *args, **kwargs):
        ROUND_TRIPS[0] += 1
        return await send(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counted


async def redis_commands():
    """(server-side commands, round trips), less this reading."""
    from stocktracker.lib.state import get_state

    trips = ROUND_TRIPS[0]
    return (await get_state().redis.info("stats"))["total_commands_processed"], trips


async def measure(label, feed, clock, cycles, requests=lambda: 0, step_s=10):
    from stocktracker.lib.keys import subscribers as subscriber_key
    from stocktracker.lib.state import get_state

    for stream in ("market", "foreign", "index"):
        await get_state().lease_acquire(f"bench-{stream}", [(subscriber_key(stream), None)], 600)
    await feed.cycle()  # resolves the day (SSI: basket + future) and warms up
    start_commands = await redis_commands()
    start_requests, start_cpu, start_wall = requests(), time.thread_time(), time.perf_counter()
    for _ in range(cycles):
        clock.advance(seconds=step_s)
        await feed.cycle()
    cpu = (time.thread_time() - start_cpu) / cycles
    wall = (time.perf_counter() - start_wall) / cycles
    per_cycle = (requests() - start_requests) / cycles
    commands, trips = redis_delta(start_commands, await redis_commands(), cycles)
    print(
        f"{label}: {per_cycle:.1f} requests/cycle, CPU {cpu * 1000:.1f} ms/cycle "
        f"(wall {wall * 1000:.1f} ms), Redis {trips:.1f} round trips ({commands:.1f} commands)/cycle, "
        f"published {feed.stats['published']} frames in {cycles + 1} cycles"
    )
    for stream in ("market", "foreign", "index"):
        await get_state().lease_release(f"bench-{stream}", [subscriber_key(stream)])
    start_commands = await redis_commands()
    idle_cpu = time.thread_time()
    for _ in range(cycles):
        await feed.cycle()
    idle_cpu = (time.thread_time() - idle_cpu) / cycles
    commands, trips = redis_delta(start_commands, await redis_commands(), cycles)
    print(
        f"{label} idle (no subscriber): CPU {idle_cpu * 1000:.2f} ms/cycle, "
        f"Redis {trips:.1f} round trips ({commands:.1f} commands)/cycle"
    )
    await feed.leader.release()


def redis_delta(start, end, cycles):
    return (end[0] - start[0] - 1) / cycles, (end[1] - start[1] - 1) / cycles


async def main():
    from apps.feed.runner import Feed
    from apps.feed.simulator import SimulatorSource
    from apps.feed.ssi import SSISource

    from .conftest import Clock, ssi_client
    from .fake_ssi import FakeSSI

    clock = Clock()
    with FakeSSI(now=clock) as fake:
        source = SSISource(ssi_client(fake, max_rps=1000), now=clock, extra=[], futures_override="")
        await measure("ssi (VN30 + future + 5 indices)", Feed(source, elect=True), clock, 50, lambda: source.requests)
        await source.aclose()
    clock = Clock()
    # The simulator's cadence on the wall clock: a cycle a second.
    source = SimulatorSource(clock="wall", seed=1, now=clock)
    await measure("simulator (1 s steps)", Feed(source, elect=True), clock, 200, step_s=1)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stocktracker.settings")
    os.environ.setdefault("LOG_LEVEL", "warning")
    import django

    django.setup()
    count_round_trips()
    asyncio.run(main())
