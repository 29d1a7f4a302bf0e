"""Clients that follow the streams for as long as they run, for end-to-end
tests that restart what is behind them.

    STK_TOKEN=stk_... python -m apps.streams.tests.follow_clients --ports 8001,8002 --per-stream 30

For each port and each stream, `--per-stream` clients connect with
`Authorization: Bearer`, and reconnect like a well-behaved client whenever
the server closes them (after 0.5-2 s, with jitter). With `--churn-every S`,
every S seconds a `--churn-share` of the clients of `--churn-stream` close
and connect again at once (as restarted clients do). One JSON line per
event: each snapshot `{"t": wall time, "c": client, "e": epoch, "s": seq,
"n": 1 for the snapshot sent on connect, else 0}`, each close `{"t", "c",
"close": the server's close code, or null for a churn}`, and `{"ready": n}`
once every client has had its first snapshot. Stops on SIGTERM.

With `--probe-every S` it instead opens one new socket every S seconds on
each port (streams in turn), waits up to 10 s for its first snapshot, and
prints `{"t": when it started, "probe": port, "result": "open" (a snapshot
came), or the close code, or the error, "took": seconds}`.
"""

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import signal
import sys
import time

import websockets

STREAMS = ("market", "foreign", "index")
SEQ_RE = re.compile(r'"seq":(\d+)')
EPOCH_RE = re.compile(r'"epoch":"([^"]*)"')
PROBE_WAIT = 10.0


def emit(record):
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")


def connect(url, token):
    return websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10, max_size=2**22, compression=None
    )


async def follow(name, url, token, stop, first, churn):
    while not stop.is_set():
        code = None
        kick = churn.get(name)
        try:
            async with connect(url, token) as ws:
                on_connect = True
                while not stop.is_set() and churn.get(name) is kick:
                    try:
                        text = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue  # look at stop and churn again
                    if not text.startswith('{"type":"snapshot"'):
                        continue
                    head = text[:300]
                    seq, epoch = int(SEQ_RE.search(head).group(1)), EPOCH_RE.search(head).group(1)
                    emit({"t": time.time(), "c": name, "e": epoch, "s": seq, "n": int(on_connect)})
                    if on_connect:
                        on_connect = False
                        first.discard(name)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            code = type(exc).__name__
        if stop.is_set():
            break
        emit({"t": time.time(), "c": name, "close": code})
        if code is not None:  # closed by the server, or could not connect: back off
            await asyncio.sleep(random.uniform(0.5, 2.0))


async def probe(port, stream, token):
    started = time.time()
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws/{stream}", token) as ws:
            async with asyncio.timeout(PROBE_WAIT):
                while not (await ws.recv()).startswith('{"type":"snapshot"'):
                    pass
            result = "open"
    except websockets.ConnectionClosed as exc:
        result = exc.rcvd.code if exc.rcvd else 1006
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        result = type(exc).__name__
    emit({"t": started, "probe": port, "stream": stream, "result": result, "took": time.time() - started})


async def probing(ports, every, token, stop):
    tasks = set()
    for n in itertools.count():
        if stop.is_set():
            break
        for port in ports:
            task = asyncio.ensure_future(probe(port, STREAMS[n % 3], token))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sys.stdout.flush()
        await asyncio.wait({asyncio.ensure_future(stop.wait())}, timeout=every)
    await asyncio.gather(*tasks, return_exceptions=True)


async def following(args, token, stop):
    clients = []
    for port in args.ports.split(","):
        for stream in STREAMS:
            for i in range(args.per_stream):
                clients.append((f"{args.name}{port}/{stream}/{i}", f"ws://127.0.0.1:{port}/ws/{stream}"))
    first = {name for name, _ in clients}
    churn = {}  # client -> a marker replaced when it is to reconnect
    tasks = [asyncio.ensure_future(follow(name, url, token, stop, first, churn)) for name, url in clients]
    while first and not stop.is_set():
        await asyncio.sleep(0.1)
    emit({"t": time.time(), "ready": len(clients)})
    churning = [name for name, _ in clients if f"/{args.churn_stream}/" in name]
    next_churn = time.monotonic() + args.churn_every
    while not stop.is_set():
        sys.stdout.flush()
        await asyncio.wait({asyncio.ensure_future(stop.wait())}, timeout=0.5)
        if args.churn_every and time.monotonic() >= next_churn:
            next_churn += args.churn_every
            for name in random.sample(churning, int(len(churning) * args.churn_share)):
                churn[name] = object()
    await asyncio.gather(*tasks, return_exceptions=True)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", required=True, help="comma-separated daphne ports on 127.0.0.1")
    parser.add_argument("--per-stream", type=int, default=30)
    parser.add_argument("--name", default="", help="prefix of the clients' names")
    parser.add_argument("--churn-every", type=float, default=0.0)
    parser.add_argument("--churn-share", type=float, default=0.2)
    parser.add_argument("--churn-stream", default="market")
    parser.add_argument("--probe-every", type=float, default=0.0)
    args = parser.parse_args()
    token = os.environ["STK_TOKEN"]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if args.probe_every:
        await probing(args.ports.split(","), args.probe_every, token, stop)
    else:
        await following(args, token, stop)
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
