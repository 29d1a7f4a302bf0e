"""One process's share of the soak's clients (driven by bench/soak.py).

    BENCH_TOKEN=stk_... python bench/soak_client.py --port 8000 --n 1000 --offset 0

Client i follows STREAMS[i % 3] with an `Authorization: Bearer` header and
reconnects whenever it is closed (after 0.5-2 s, as a well-behaved client
does). Every --churn-every seconds a --churn-share of the clients close and
reconnect (the reconnect-storm pattern). What a client counts:
- *lost*: on one open socket, a snapshot's seq skips numbers of its epoch
  (after a reconnect the socket starts again from the latest snapshot, so
  nothing is counted across a reconnect);
- *backwards*: a snapshot before one this client already had in the same
  epoch (across reconnects too: a client keeps its position, as the
  dashboard does, and ignores what a server whose position went back without
  a new epoch sends it), or the same one twice on one socket;
- *silences*: an open socket with no snapshot for more than --silence
  seconds (from its last snapshot, or its opening, to the next snapshot or
  its close). A quiet stream is silent too: the soak decides, against what
  was published meanwhile, which silences were faults.
Every --report-every seconds prints one `REPORT {json}` line: sockets open,
frames received, and since the last report the losses (wall time, count),
the backwards steps (wall time, stream, epoch, from, to) and the silences
(stream, start, end, sockets; one entry for the sockets that were silent
over the same span). Stops on SIGTERM or after --life seconds.
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
p.add_argument("--silence", type=float, default=3.0, help="seconds without a snapshot that count as a silence")
args = p.parse_args()

TOKEN = os.environ["BENCH_TOKEN"]


class Totals:
    open = 0
    frames = 0
    connects = 0
    losses = []  # (wall time, frames lost)
    backwards = []  # (wall time, stream, epoch, from seq, to seq)
    silences = {}  # (stream, start, end) rounded to 0.1 s -> sockets
    closes = {}
    errors = {}


totals = Totals()
stop = asyncio.Event()


def silent(stream, start, end):
    if end - start > args.silence:
        key = (stream, round(start, 1), round(end, 1))
        totals.silences[key] = totals.silences.get(key, 0) + 1


async def client(index, churns, slot):
    stream = STREAMS[index % 3]
    url = f"ws://{args.host}:{args.port}/ws/{stream}"
    position = {}  # epoch -> highest seq this client has had in it
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
                    await follow(ws, churns[slot], stream, position)  # a fresh event after each churn
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


async def follow(ws, churn, stream, position):
    last = None  # (epoch, seq) of the last snapshot on this socket
    heard = time.time()  # the last snapshot on this socket, or its opening
    kick = asyncio.ensure_future(churn.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, kick, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                return  # churned (close and reconnect) or stopped
            text = recv.result()
            if not text.startswith('{"type":"snapshot"'):
                continue
            now = time.time()
            silent(stream, heard, now)
            heard = now
            head = text[:300]
            seq, epoch = int(SEQ_RE.search(head).group(1)), EPOCH_RE.search(head).group(1)
            totals.frames += 1
            if last is not None and last[0] == epoch and seq > last[1] + 1:
                totals.losses.append((now, seq - last[1] - 1))
            had = position.get(epoch)
            if (had is not None and seq < had) or last == (epoch, seq):
                totals.backwards.append((now, stream, epoch, had, seq))
            position[epoch] = max(seq, had or 0)
            last = (epoch, seq)
    finally:
        silent(stream, heard, time.time())  # the socket closes, or the client stops, after a silence
        kick.cancel()
        stopping.cancel()


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
            backwards, totals.backwards = totals.backwards, []
            silences, totals.silences = totals.silences, {}
            report = {
                "t": time.time(),
                "open": totals.open,
                "frames": totals.frames,
                "connects": totals.connects,
                "losses": losses,
                "backwards": backwards,
                "silences": [[*key, count] for key, count in silences.items()],
                "closes": totals.closes,
                "errors": totals.errors,
            }
            print("REPORT " + json.dumps(report), flush=True)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
