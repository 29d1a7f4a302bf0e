"""One process's share of the soak's clients (driven by bench/soak.py).

    BENCH_TOKEN=stk_... python bench/soak_client.py --port 8000 --n 1000 --offset 0

Client i follows STREAMS[i % 3] with an `Authorization: Bearer` header and
reconnects whenever it is closed (after 0.5-2 s, as a well-behaved client
does). Every --churn-every seconds a --churn-share of the clients close and
reconnect (the reconnect-storm pattern). A frame is *lost* when, on one open
socket, a snapshot's seq skips numbers of its epoch; after a reconnect the
socket starts again from the latest snapshot, so nothing is counted across a
reconnect. Every --report-every seconds prints one `REPORT {json}` line:
sockets open, frames received, and the losses since the last report with the
wall time of each. Stops on SIGTERM or after --life seconds.
"""

import argparse
import asyncio
import json
import os
import random
import re
import signal
import time

import websockets

STREAMS = ("market", "foreign", "index")
SEQ_RE = re.compile(r'"seq":(\d+)')
EPOCH_RE = re.compile(r'"epoch":"([^"]*)"')

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--n", type=int, required=True)
p.add_argument("--offset", type=int, default=0)
p.add_argument("--churn-every", type=float, default=10.0)
p.add_argument("--churn-share", type=float, default=0.1)
p.add_argument("--report-every", type=float, default=5.0)
p.add_argument("--ramp", type=float, default=20.0, help="seconds over which the first connects are spread")
p.add_argument("--life", type=float, default=3600)
args = p.parse_args()

TOKEN = os.environ["BENCH_TOKEN"]


class Totals:
    open = 0
    frames = 0
    connects = 0
    losses = []  # (wall time, frames lost)
    closes = {}
    errors = {}


totals = Totals()
stop = asyncio.Event()


async def client(index, churns, slot):
    stream = STREAMS[index % 3]
    url = f"ws://{args.host}:{args.port}/ws/{stream}"
    await asyncio.sleep(random.uniform(0, args.ramp))
    while not stop.is_set():
        try:
            async with websockets.connect(
                url,
                additional_headers={"Authorization": f"Bearer {TOKEN}"},
                open_timeout=20,
                ping_interval=None,
                max_size=2**22,
                compression=None,
            ) as ws:
                totals.connects += 1
                totals.open += 1
                try:
                    await follow(ws, churns[slot])  # a fresh event after each churn
                finally:
                    totals.open -= 1
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            totals.closes[code] = totals.closes.get(code, 0) + 1
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            name = type(exc).__name__
            totals.errors[name] = totals.errors.get(name, 0) + 1
        if not stop.is_set():
            await asyncio.sleep(random.uniform(0.5, 2.0))


async def follow(ws, churn):
    last = None  # (epoch, seq) of the last snapshot on this socket
    kick = asyncio.ensure_future(churn.wait())
    try:
        while not stop.is_set():
            recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, kick}, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                return  # churned: close and reconnect
            text = recv.result()
            if not text.startswith('{"type":"snapshot"'):
                continue
            head = text[:300]
            seq, epoch = int(SEQ_RE.search(head).group(1)), EPOCH_RE.search(head).group(1)
            totals.frames += 1
            if last is not None and last[0] == epoch and seq > last[1] + 1:
                totals.losses.append((time.time(), seq - last[1] - 1))
            last = (epoch, seq)
    finally:
        kick.cancel()


async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(args, "churn_share", 0))  # the soak's end
    churns = [asyncio.Event() for _ in range(args.n)]
    tasks = [asyncio.ensure_future(client(args.offset + i, churns, i)) for i in range(args.n)]
    started = time.monotonic()
    next_churn = started + args.ramp + args.churn_every
    next_report = started + args.report_every
    while not stop.is_set() and time.monotonic() - started < args.life:
        await asyncio.sleep(0.2)
        now = time.monotonic()
        if now >= next_churn and args.churn_share > 0:
            next_churn += args.churn_every
            for i in random.sample(range(args.n), int(args.n * args.churn_share)):
                churns[i].set()
                churns[i] = asyncio.Event()
        if now >= next_report:
            next_report += args.report_every
            losses, totals.losses = totals.losses, []
            report = {
                "t": time.time(),
                "open": totals.open,
                "frames": totals.frames,
                "connects": totals.connects,
                "losses": losses,
                "closes": totals.closes,
                "errors": totals.errors,
            }
            print("REPORT " + json.dumps(report), flush=True)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
