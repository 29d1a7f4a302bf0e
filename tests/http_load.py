"""A paced HTTP/1.1 load generator for probes: GET one path at a fixed rate.

    python -m tests.http_load PORT PATH --rate 1000 --seconds 10 [--connections 50]

Keep-alive connections on loopback, each sending its next request as soon as
its answer is in, all together held to `--rate` requests per second (a
request not started on time is counted as late, never sent in a burst). Prints
one JSON line: requests sent, answers by status, achieved rate, latency p50,
p99 and max (ms).
"""

import argparse
import asyncio
import json
import time


async def _one(reader, writer, request):
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status, b"connection: close" in head.lower()


async def hammer(port, path, rate, seconds, connections=50, host="127.0.0.1"):
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode()
    start = time.monotonic() + 0.2
    total = int(rate * seconds)
    slots = iter(range(total))
    statuses, latencies, late = {}, [], 0

    async def worker():
        nonlocal late
        reader = writer = None
        for n in slots:
            due = start + n / rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.05:
                late += 1
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            began = time.monotonic()
            try:
                status, closing = await asyncio.wait_for(_one(reader, writer, request), 10)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                status, closing = 0, True
            latencies.append(time.monotonic() - began)
            statuses[status] = statuses.get(status, 0) + 1
            if closing:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    took = time.monotonic() - start
    latencies.sort()

    def pct(p):
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2) if latencies else None

    return {
        "sent": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(took, 2),
        "rate": round(len(latencies) / took, 1),
        "late": late,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": round(1000 * latencies[-1], 2) if latencies else None,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("path")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(hammer(args.port, args.path, args.rate, args.seconds, args.connections))))


if __name__ == "__main__":
    main()
