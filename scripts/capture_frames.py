#!/usr/bin/env python3
"""Capture real frames from the simulator for docs/examples/ (the AsyncAPI examples
and the README's sample frame).

    .venv/bin/python scripts/capture_frames.py [--out docs/examples]

Runs the app as `make run` does (embedded: SQLite in a temporary folder, the
simulator on its demo clock) on a free port, signs in with a fresh token, waits
for continuous trading with matched prices on the market stream, and writes one
frame of each kind it saw: welcome and the three snapshots.
"""

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
STREAMS = ("market", "foreign", "index")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ready(frames):
    """Every stream has a snapshot, and the market one is in continuous trading with prices."""
    market = frames.get("market")
    if not market or set(frames) < {"welcome", *STREAMS}:
        return False
    data = market["data"]
    return data["phase"] == "continuous" and all(stock["last"] is not None for stock in data["stocks"])


async def capture(port, token, limit_s):
    frames = {}

    async def listen(stream):
        url = f"ws://127.0.0.1:{port}/ws/{stream}"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            async for text in ws:
                frame = json.loads(text)
                if frame["type"] == "welcome" and stream == "market":
                    frames["welcome"] = frame
                elif frame["type"] == "snapshot":
                    frames[stream] = frame
                if ready(frames):
                    return

    tasks = [asyncio.create_task(listen(stream)) for stream in STREAMS]
    deadline = time.monotonic() + limit_s
    while not ready(frames):
        if time.monotonic() > deadline:
            sys.exit(f"no continuous-trading frames within {limit_s} s; saw {sorted(frames)}")
        await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return frames


def pretty(frame):
    """Indented JSON with flat lists of numbers (sparkline points) kept on one line."""
    text = json.dumps(frame, indent=1, ensure_ascii=False)
    return re.sub(r"\[\s+([-0-9.,\snul]+?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "examples"))
    parser.add_argument("--speed", default="60", help="SIMULATOR_SPEED, to reach continuous trading quickly")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stocktracker-capture-") as tmp:
        port = free_port()
        env = {
            **os.environ,
            "DEBUG": "true",
            "DATABASE_URL": f"sqlite:///{tmp}/db.sqlite3",
            "REDIS_URL": "",
            "FEED_SOURCE": "simulator",
            "SIMULATOR_CLOCK": "demo",
            "SIMULATOR_SPEED": args.speed,
            "LOG_LEVEL": "warning",
        }
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, check=True, cwd=ROOT)
        out = subprocess.run(
            [*manage, "bootstrap", "--username", "capture", "--url", f"http://127.0.0.1:{port}"],
            env=env,
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout
        token = re.search(r"stk_[A-Za-z0-9]+", out).group(0)
        server = subprocess.Popen(
            [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        sys.exit("the server did not start")
                    time.sleep(0.2)
            frames = asyncio.run(capture(port, token, args.timeout))
        finally:
            server.terminate()
            server.wait(timeout=20)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        path = out_dir / (f"{name}.json" if name == "welcome" else f"{name}-snapshot.json")
        path.write_text(pretty(frame) + "\n")
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
