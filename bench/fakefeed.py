"""Stand-in publisher for harness development: publishes all three streams at 1 Hz
through apps.streams.publish.publish_snapshot (the same path as the feed worker).

    python bench/fakefeed.py [--interval 1] [--max-life 600]

Payloads come from the project's simulator and builders when they import;
otherwise synthetic rows of a realistic size. `run.py --feed fake` uses it;
the default (`--feed runworker`) measures the real `manage.py runworker`.
Prints `PUBLISHING` once running; stops on SIGTERM/SIGINT or after --max-life.
"""

import argparse
import asyncio
import datetime as dt
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stocktracker.settings")

import django

django.setup()

from apps.streams.publish import publish_snapshot  # noqa: E402


def simulator_payloads():
    """A function returning {stream: data}, built by the project's own simulator."""
    from django.conf import settings

    from apps.feed import payloads, simulator

    sim = simulator.Simulator(settings.SIMULATOR_SEED)
    clock = simulator.DemoClock(settings.SIMULATOR_SPEED)

    def build():
        data = sim.snapshot(clock.now())
        return data.trading_date.isoformat(), {
            "market": payloads.build_market(data),
            "foreign": payloads.build_foreign(data),
            "index": payloads.build_index(data, data.points),
        }

    build()
    return build


def synthetic_payloads():
    rnd = random.Random(1)
    symbols = [f"S{i:02d}" for i in range(30)]

    def build():
        stocks = [
            {"symbol": s, "ref": 25000, "last": rnd.randint(23000, 27000), "volume": rnd.randint(1, 10**7)}
            | {f"f{k}": rnd.randint(0, 10**9) for k in range(14)}
            for s in symbols
        ]
        rows = [{"symbol": s} | {f"f{k}": rnd.randint(0, 10**9) for k in range(9)} for s in symbols]
        indices = [
            {"code": c, "value": rnd.uniform(900, 1300), "points": [[i, rnd.uniform(900, 1300)] for i in range(120)]}
            for c in ("VNINDEX", "VN30", "HNXIndex", "HNX30", "HNXUpcomIndex")
        ]
        return dt.datetime.now(dt.UTC).date().isoformat(), {
            "market": {"phase": "continuous", "stocks": stocks},
            "foreign": {"rows": rows},
            "index": {"indices": indices},
        }

    return build


async def main(args):
    try:
        build = simulator_payloads()
        kind = "simulator"
    except Exception as exc:  # noqa: BLE001 - the feed app is being written; fall back
        print(f"simulator unavailable ({exc!r}); using synthetic payloads", flush=True)
        build = synthetic_payloads()
        kind = "synthetic"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.call_later(args.max_life, stop.set)
    print(f"PUBLISHING payloads={kind}", flush=True)
    next_tick = time.monotonic()
    while not stop.is_set():
        epoch, data = build()
        source_ms = int(time.time() * 1000)
        for stream, payload in data.items():
            await publish_snapshot(stream, payload, day=epoch, source_ms=source_ms, feed="live", simulated=True)
        next_tick += args.interval
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, next_tick - time.monotonic()))
        except TimeoutError:
            pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--max-life", type=float, default=600)
    asyncio.run(main(parser.parse_args()))
