"""Hub send -> client receive latency through runworker + daphne, with SSI faked on loopback.

    python scripts/with_services.py -- python bench/hub_latency.py
    ... bench/hub_latency.py --rate 200 --duration 90 --idle 20

Needs REDIS_URL and DATABASE_URL (with_services.py provides throwaway ones).
In this process: the fake SSI REST server and the fake streaming hub
(apps/feed/tests/fake_*.py), both on 127.0.0.1. Started as children: daphne and
`manage.py runworker` with FEED_SOURCE=ssi pointed at both fakes (never SSI's
hosts). Three real WebSocket clients, one per stream, with a Bearer token.

Phases: `--idle` s subscribed with the hub sending only keep-alives (the
worker's baseline CPU), then `--duration` s of X-TRADE messages at `--rate`
per second over the 30 VN30 symbols and the future, X-QUOTE and R in between.

Reported:
- latency of every X-TRADE message: from the hub's send to the first market
  frame the client receives that includes it (its TotalVol reached), p50/p99/max;
- REST requests per hour with the stream healthy (counted by the fake REST server
  over the trade phase);
- the worker's CPU per 1,000 hub messages (trade phase CPU minus the idle
  baseline over the same time, psutil).
"""

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stocktracker.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("DEBUG", "false")

import django  # noqa: E402

django.setup()

import websockets  # noqa: E402

from apps.feed import market  # noqa: E402
from apps.feed.tests.conftest import Clock  # noqa: E402
from apps.feed.tests.fake_hub import FakeHub, trade  # noqa: E402
from apps.feed.tests.fake_ssi import CONSUMER_ID, CONSUMER_SECRET, FakeSSI  # noqa: E402

PY = sys.executable


def log(msg):
    print(f"[hub-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args, env, name, logdir):
    out = open(os.path.join(logdir, f"{name}.log"), "w")  # lives as long as the child
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_port(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing on port {port}")


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def cpu(proc):
    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


async def client(url, token, stream, frames, ready):
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(f"{url}/ws/{stream}", additional_headers=headers, open_timeout=20) as ws:
        async for text in ws:
            now = time.time()
            frame = json.loads(text)
            if frame.get("type") == "snapshot":
                frames.append((now, frame))
                ready.set()


def volumes(frame):
    data = frame["data"]
    out = {s["symbol"]: s["volume"] or 0 for s in data["stocks"]}
    if data.get("futures"):
        out[data["futures"]["symbol"]] = data["futures"]["volume"] or 0
    return out


async def main(args):
    logdir = os.path.join(ROOT, "bench", "raw")
    os.makedirs(logdir, exist_ok=True)
    subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)
    seeded = subprocess.run([PY, "bench/seed.py", "--max-connections", "10"], cwd=ROOT, check=True, capture_output=True)
    token = json.loads(seeded.stdout.decode().split("TOKEN ", 1)[1])["token"]
    morning = dt.datetime.combine(market.trading_date(market.vn_now()), dt.time(10), tzinfo=market.VN)
    with FakeSSI(now=Clock(morning)) as rest, FakeHub(rest, keepalive=20.0) as hub:
        env = dict(os.environ)
        env.update(
            FEED_SOURCE="ssi",
            SSI_BASE_URL=rest.url,
            SSI_STREAM_URL=hub.url,
            SSI_CONSUMER_ID=CONSUMER_ID,
            SSI_CONSUMER_SECRET=CONSUMER_SECRET,
            SSI_MAX_RPS="1",
            FEED_PUBLISH_INTERVAL=str(args.interval),
            FEED_IN_PROCESS="false",
            PYTHONUNBUFFERED="1",
            TEST_MARKET_NOW=morning.isoformat(),  # the worker's market clock: the hub is held in trading hours only
        )
        port = free_port()
        web = start(
            [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "stocktracker.asgi:application"],
            env,
            "hub-daphne",
            logdir,
        )
        worker = start([PY, "tests/clocked_worker.py"], env, "hub-worker", logdir)
        try:
            wait_port(port, web)
            frames = {stream: [] for stream in ("market", "foreign", "index")}
            readies = {stream: asyncio.Event() for stream in frames}
            tasks = [
                asyncio.ensure_future(client(f"ws://127.0.0.1:{port}", token, s, frames[s], readies[s])) for s in frames
            ]
            for stream, ready in readies.items():
                await asyncio.wait_for(ready.wait(), 60)
                log(f"first {stream} snapshot")
            while len(hub.subscribed()) < 5:
                await asyncio.sleep(0.1)
            await asyncio.sleep(3)  # the snapshot after the links came up, the back-fill
            base = volumes(frames["market"][-1][1])
            symbols = sorted(base)
            log(f"idle phase: {args.idle} s of keep-alives only")
            rest.reset_log()
            cpu0, t0 = cpu(worker), time.monotonic()
            await asyncio.sleep(args.idle)
            idle_rate = (cpu(worker) - cpu0) / (time.monotonic() - t0)
            # The trade phase: a message mix of 60 % X-TRADE, 30 % X-QUOTE, 10 % R.
            rng = random.Random(11)
            totals = dict(base)
            messages, trades = [], []
            count = int(args.rate * args.duration)
            for n in range(count):
                symbol = rng.choice(symbols)
                kind = rng.random()
                if kind < 0.6:
                    volume = rng.choice((100, 200, 500, 1000))
                    totals[symbol] += volume
                    trades.append((n, symbol, totals[symbol]))
                    side = rng.choice(("BU", "SD", ""))
                    messages.append(
                        ("X-TRADE", trade(symbol, 20000 + rng.randrange(100) * 50, volume, totals[symbol], side=side))
                    )
                elif kind < 0.9:
                    price = 20000 + rng.randrange(100) * 50
                    quote = {"Symbol": symbol, "BidPrice1": price, "BidVol1": rng.randrange(1, 900) * 100,
                             "AskPrice1": price + 50, "AskVol1": rng.randrange(1, 900) * 100}  # fmt: skip
                    messages.append(("X-QUOTE", quote))
                else:
                    messages.append(
                        ("R", {"Symbol": symbol, "TotalRoom": 1e9, "CurrentRoom": 1e8 - n, "BuyVol": n * 10.0})
                    )
            log(f"trade phase: {count} messages over {args.duration} s")
            rest.reset_log()
            market_from = len(frames["market"])
            per_frame = max(1, args.rate // 50)  # ~50 frames a second, as a busy hub batches
            cpu1, t1 = cpu(worker), time.monotonic()
            sent = await asyncio.wrap_future(hub.burst(messages, seconds=args.duration, per_frame=per_frame))
            await asyncio.sleep(args.interval + 1.5)  # the last messages' publish
            trade_s = time.monotonic() - t1
            trade_cpu = cpu(worker) - cpu1
            rest_requests = [r.name for r in rest.requests]
            # latency: each trade's send time -> the first market frame whose volume covers it
            seen = frames["market"][market_from:]
            marks = [(t, volumes(f)) for t, f in seen]
            latencies = []
            missing = 0
            for n, symbol, total in trades:
                sent_at = sent[n // per_frame]
                first = next((t for t, vol in marks if t >= sent_at and vol.get(symbol, 0) >= total), None)
                if first is None:
                    missing += 1
                else:
                    latencies.append(first - sent_at)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            stop(worker)
            stop(web)
    extra_cpu = max(0.0, trade_cpu - idle_rate * trade_s)
    result = {
        "messages": count,
        "trades": len(trades),
        "rate_per_s": args.rate,
        "publish_interval_s": args.interval,
        "latency_s": {
            "p50": round(pct(latencies, 0.5), 3),
            "p99": round(pct(latencies, 0.99), 3),
            "max": round(max(latencies), 3),
            "samples": len(latencies),
            "never_seen": missing,
        },
        "market_frames_in_trade_phase": len(seen),
        "rest_requests_trade_phase": len(rest_requests),
        "rest_requests_by_name": {n: rest_requests.count(n) for n in sorted(set(rest_requests))},
        "rest_requests_per_hour": round(len(rest_requests) * 3600 / trade_s),
        "worker_cpu_idle_s_per_s": round(idle_rate, 4),
        "worker_cpu_trade_phase_s": round(trade_cpu, 3),
        "worker_cpu_ms_per_1000_messages": round(extra_cpu * 1000 / count * 1000, 1),
        "worker_cpu_ms_per_1000_messages_gross": round(trade_cpu * 1000 / count * 1000, 1),
    }
    print(json.dumps(result, indent=2))
    with open(os.path.join(logdir, "hub_latency.json"), "w") as out:
        json.dump(result, out, indent=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=200, help="hub messages per second")
    parser.add_argument("--duration", type=float, default=90.0)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0, help="FEED_PUBLISH_INTERVAL")
    asyncio.run(main(parser.parse_args()))
