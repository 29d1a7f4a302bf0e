"""Many stream clients in one process, for the Sentinel failover test.

    TOKEN=stk_... python tests/failover_clients.py --port 8765 --n 2000

Opens --n sockets (round-robin over /ws/market, /ws/foreign, /ws/index, with
an `Authorization: Bearer` header) through a raw asyncio.Protocol with a
minimal frame parser, so that thousands of them cost little next to the
server under test. Answers protocol pings. For every `snapshot` it records
when it arrived and when it was published, and counts a `seq` lower than the
last one seen on that socket within the same epoch (a regression). Prints
`CONNECTED {json}`, then answers lines on stdin:

- `STATUS`: `STATUS {json}` (sockets open, with a snapshot, close codes);
- `REPORT t0 NAME=t ...` (epoch ms: t0 the failover was asked for, then
  named moments after it): `REPORT {json}`, over the sockets: how long after
  t0 the first snapshot published after each moment arrived (and how many
  sockets got none), the longest silence from t0 on, regressions, epochs;
- `END` (or end of input): closes every socket and exits.

Exits by itself after --max-life seconds.
"""

import argparse
import array
import asyncio
import base64
import json
import os
import re
import sys
import time

STREAMS = ("market", "foreign", "index")
SNAPSHOT = b'{"type":"snapshot"'
EPOCH_RE = re.compile(rb'"epoch":"([^"]*)"')
SEQ_RE = re.compile(rb'"seq":(\d+)')
PUB_RE = re.compile(rb'"published_ms":(\d+)')
HEAD = 400  # the envelope comes before `data`


class Conn(asyncio.Protocol):
    def __init__(self, loop, host, port, path, token):
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
        self.welcomed = loop.create_future()
        self.buf = bytearray()
        self.upgraded = False
        self.tr = None
        self.open = False
        self.close_code = None
        self.frag = None
        self.arrived = array.array("d")  # ms
        self.published = array.array("d")  # ms
        self.last = None  # (epoch, seq)
        self.regressions = []  # (epoch, seq before, seq after)
        self.epochs = set()

    def connection_made(self, tr):
        self.tr = tr
        self.open = True
        tr.write(self.request)

    def connection_lost(self, exc):
        self.open = False
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError(f"closed before welcome ({self.close_code})"))

    def data_received(self, data):
        now_ms = time.time() * 1000.0
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                self.welcomed.set_exception(ConnectionError(status.decode(errors="replace")))
                self.tr.close()
                return
            self.upgraded = True
        while len(buf) >= 2:
            length = buf[1] & 0x7F
            header = 2
            if length == 126:
                if len(buf) < 4:
                    return
                header, length = 4, int.from_bytes(buf[2:4], "big")
            elif length == 127:
                if len(buf) < 10:
                    return
                header, length = 10, int.from_bytes(buf[2:10], "big")
            end = header + length
            if len(buf) < end:
                return
            opcode, fin = buf[0] & 0x0F, buf[0] & 0x80
            if opcode in (0, 1):
                if fin and self.frag is None:
                    self._text(bytes(buf[header : min(end, header + HEAD)]), now_ms)
                else:  # fragmented: rare
                    self.frag = (self.frag or bytearray()) + buf[header:end]
                    if fin:
                        whole, self.frag = bytes(self.frag), None
                        self._text(whole[:HEAD], now_ms)
            elif opcode == 9:  # ping: a masked pong (zero mask)
                payload = bytes(buf[header:end])
                self.tr.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif opcode == 8:
                payload = bytes(buf[header:end])
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.tr.write(bytes([0x88, 0x82]) + b"\0\0\0\0" + (payload[:2] or b"\x03\xe8"))
                self.tr.close()
            del buf[:end]

    def _text(self, head, now_ms):
        if head.startswith(SNAPSHOT):
            epoch, seq, published = EPOCH_RE.search(head), SEQ_RE.search(head), PUB_RE.search(head)
            position = (epoch.group(1), int(seq.group(1)))
            if self.last is not None and self.last[0] == position[0] and position[1] < self.last[1]:
                self.regressions.append((position[0].decode(), self.last[1], position[1]))
            self.last = position
            self.epochs.add(position[0])
            self.arrived.append(now_ms)
            self.published.append(float(published.group(1)))
        elif head.startswith(b'{"type":"welcome"') and not self.welcomed.done():
            self.welcomed.set_result(True)


def _first_after(conn, published_from, t0):
    for arrived, published in zip(conn.arrived, conn.published, strict=True):
        if published >= published_from:
            return (arrived - t0) / 1000.0
    return None


def _longest_silence(conn, t0, now_ms):
    last, longest = t0, 0.0
    for arrived in conn.arrived:
        if arrived >= t0:
            longest = max(longest, arrived - last)
            last = arrived
    return max(longest, now_ms - last) / 1000.0


def _spread(values):
    values = sorted(values)
    if not values:
        return None
    return {"max": round(values[-1], 2), "p50": round(values[len(values) // 2], 2), "min": round(values[0], 2)}


def report(conns, t0, marks):
    now_ms = time.time() * 1000.0
    regressions = [r for c in conns for r in c.regressions]
    found = {"sockets": len(conns), "open": sum(c.open for c in conns), "close_codes": _codes(conns)}
    for name, mark in marks.items():
        after = [_first_after(c, mark, t0) for c in conns]
        found[name] = {"first_frame_s": _spread([v for v in after if v is not None]), "none": after.count(None)}
    found.update(
        longest_silence_s=_spread([_longest_silence(c, t0, now_ms) for c in conns]),
        regressions=len(regressions),
        regression_examples=regressions[:5],
        sockets_that_saw_two_epochs=sum(len(c.epochs) > 1 for c in conns),
    )
    return found


def _codes(conns):
    codes = {}
    for conn in conns:
        if conn.close_code is not None:
            codes[str(conn.close_code)] = codes.get(str(conn.close_code), 0) + 1
    return codes


async def main(args):
    loop = asyncio.get_running_loop()
    loop.call_later(args.max_life, lambda: os._exit(3))
    token = os.environ["TOKEN"]
    gate = asyncio.Semaphore(args.concurrency)
    failures = {}

    async def one(index):
        path = f"/ws/{STREAMS[index % len(STREAMS)]}"
        for attempt in range(5):
            async with gate:
                conn = None
                try:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(
                            lambda: Conn(loop, args.host, args.port, path, token), args.host, args.port
                        ),
                        15,
                    )
                    await asyncio.wait_for(conn.welcomed, 30)
                    return conn
                except Exception as exc:  # noqa: BLE001 - counted, then retried
                    failures[repr(exc)[:100]] = failures.get(repr(exc)[:100], 0) + 1
                    if conn is not None and conn.tr is not None:
                        conn.tr.abort()
            await asyncio.sleep(0.2 * (attempt + 1))
        return None

    started = time.monotonic()
    conns = [c for c in await asyncio.gather(*(one(i) for i in range(args.n))) if c is not None]
    info = {"connected": len(conns), "seconds": round(time.monotonic() - started, 1), "failures": failures}
    print("CONNECTED " + json.dumps(info), flush=True)
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "END":
            break
        if line[0] == "STATUS":
            status = {
                "open": sum(c.open for c in conns),
                "with_snapshot": sum(len(c.arrived) > 0 for c in conns),
                "close_codes": _codes(conns),
            }
            print("STATUS " + json.dumps(status), flush=True)
        elif line[0] == "REPORT":
            marks = {name: float(t) for name, _, t in (item.partition("=") for item in line[2:])}
            print("REPORT " + json.dumps(report(conns, float(line[1]), marks)), flush=True)
    for conn in conns:
        if conn.tr is not None:
            conn.tr.abort()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=50, help="connects in flight at once")
    parser.add_argument("--max-life", type=float, default=600)
    asyncio.run(main(parser.parse_args()))
