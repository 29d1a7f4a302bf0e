"""Many-connection WebSocket load client for the stocktracker streams.

A raw asyncio.Protocol with a minimal frame parser (the approach of
shared/reference/performance.md's wsclient.py): cheap enough to hold
thousands of sockets on the same 2 cores as the server it measures.

    BENCH_TOKEN=stk_... python bench/client.py --port 8765 --n 1250 --offset 0 --raw out.bin

Connection i (counting from --offset) goes to stream STREAMS[i % 3] with an
`Authorization: Bearer` header; it counts as connected once the server's
`welcome` frame arrives. Prints one `CONNECTED {json}` line, waits for a line
on stdin ("GO"), and records, for every `snapshot` frame from 1 s before the end
of --warmup to GRACE s after the --duration window, receive time -
`published_ms` (ms), `published_ms`, its seq and its connection's index: the
harness keeps the frames published in its own window (by seq), so a frame
still on its way at either edge is counted once, whole. Writes them to --raw
(float64), --raw.pub (float64), --raw.seq (int64), --raw.conn (int32), CPU
over the --duration window only, and prints one `RESULT {json}`.
Answers protocol pings. Then stays connected (idle phase) until a second line
on stdin, prints `IDLE {json}` and closes. Exits by itself after --max-life seconds.
"""

import argparse
import array
import asyncio
import base64
import json
import os
import re
import resource
import sys
import time

STREAMS = ("market", "foreign", "index")

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--n", type=int, required=True)
p.add_argument("--offset", type=int, default=0, help="index of the first connection (stream round-robin)")
p.add_argument("--duration", type=float, default=20)
p.add_argument("--warmup", type=float, default=3)
p.add_argument("--concurrency", type=int, default=50, help="connects in flight at once")
p.add_argument("--connect-timeout", type=float, default=120, help="give up connecting after this many seconds")
p.add_argument("--raw", required=True)
p.add_argument("--max-life", type=float, default=300)
args = p.parse_args()

TOKEN = os.environ.get("BENCH_TOKEN", "")
SNAPSHOT_PREFIX = b'{"type":"snapshot"'
SEQ_RE = re.compile(rb'"seq":(\d+)')
PUB_RE = re.compile(rb'"published_ms":(\d+)')
HEAD = 400  # the envelope's fields come before `data`; look no further than this
GRACE = 2.0  # s recorded after the window: frames published at its end are still arriving


class Stats:
    measuring = False
    lost_after_ready = 0
    bad_frames = 0
    snapshot_bytes = 0
    heartbeats = 0
    feed_frames = 0
    other_frames = 0
    close_codes = {}
    errors = {}
    connect_failures = {}


st = Stats()
lat = array.array("d")
pubs = array.array("d")  # each latency's frame (published_ms): shows whether a tail is a few slow frames
frame_seqs = array.array("q")  # each latency's frame seq (per stream): the harness selects its window by it
frame_conns = array.array("i")  # each latency's connection (global index: its stream is index % 3)


def note(table, key):
    table[key] = table.get(key, 0) + 1


class Conn(asyncio.Protocol):
    def __init__(self, loop, index, stream):
        self.index = index
        self.stream = stream
        self.buf = bytearray()
        self.upgraded = False
        self.ready = loop.create_future()  # set at `welcome`
        self.tr = None
        self.closed = False
        self.frag = None

    def connection_made(self, tr):
        self.tr = tr
        key = base64.b64encode(os.urandom(16)).decode()
        tr.write(
            (
                f"GET /ws/{self.stream} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {TOKEN}\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc):
        self.closed = True
        if self.ready.done() and not self.ready.exception():
            st.lost_after_ready += 1
        elif not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before welcome"))

    def _fail(self, why):
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))

    def data_received(self, data):
        now_ms = time.time() * 1000.0
        buf = self.buf
        buf += data
        if not self.upgraded:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: i + 4]
            if b" 101 " not in status:
                self._fail(status.decode(errors="replace"))
                self.tr.close()
                return
            self.upgraded = True
        while True:
            n = len(buf)
            if n < 2:
                return
            b0 = buf[0]
            b1 = buf[1] & 0x7F
            if b1 < 126:
                hl, ln = 2, b1
            elif b1 == 126:
                if n < 4:
                    return
                hl, ln = 4, int.from_bytes(buf[2:4], "big")
            else:
                if n < 10:
                    return
                hl, ln = 10, int.from_bytes(buf[2:10], "big")
            end = hl + ln
            if n < end:
                return
            op = b0 & 0x0F
            fin = b0 & 0x80
            if op == 1 and fin:
                self._text(buf, hl, end, now_ms)
            elif op in (1, 0):  # fragmented text: rare, reassemble
                self.frag = (self.frag or bytearray()) + buf[hl:end]
                if fin:
                    whole = self.frag
                    self.frag = None
                    self._text(whole, 0, len(whole), now_ms)
            elif op == 9:  # ping -> masked pong (zero mask key)
                payload = bytes(buf[hl:end])
                self.tr.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif op == 8:
                payload = bytes(buf[hl:end])
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                note(st.close_codes, code)
                self._fail(f"closed {code}")
                echo = payload[:2] or b"\x03\xe8"
                self.tr.write(bytes([0x88, 0x80 | len(echo)]) + b"\0\0\0\0" + echo)
                self.tr.close()
            del buf[:end]

    def _text(self, buf, start, end, now_ms):
        if buf.startswith(SNAPSHOT_PREFIX, start):
            if not st.measuring:
                return
            head = bytes(buf[start : min(end, start + HEAD)])
            pub = PUB_RE.search(head)
            if pub is None:
                st.bad_frames += 1
                return
            seq = SEQ_RE.search(head)
            if seq is None:
                st.bad_frames += 1
                return
            published = int(pub.group(1))
            lat.append(now_ms - published)
            pubs.append(published)
            frame_seqs.append(int(seq.group(1)))
            frame_conns.append(self.index)
            st.snapshot_bytes += end - start
            return
        head = bytes(buf[start : min(end, start + 40)])
        if head.startswith(b'{"type":"heartbeat"'):
            st.heartbeats += 1
        elif head.startswith(b'{"type":"welcome"'):
            if not self.ready.done():
                self.ready.set_result(True)
        elif head.startswith(b'{"type":"feed"'):
            st.feed_frames += 1
        elif head.startswith(b'{"type":"error"'):
            try:
                note(st.errors, json.loads(bytes(buf[start:end])).get("code", "?"))
            except ValueError:
                note(st.errors, "?")
        else:
            st.other_frames += 1


async def main():
    loop = asyncio.get_running_loop()
    loop.call_later(args.max_life, lambda: os._exit(3))
    sem = asyncio.Semaphore(args.concurrency)
    conns = []
    deadline = time.monotonic() + args.connect_timeout

    async def one(i):
        index = args.offset + i
        stream = STREAMS[index % len(STREAMS)]
        for attempt in range(5):
            if time.monotonic() > deadline:
                return False
            async with sem:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                conn = None
                try:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(lambda: Conn(loop, index, stream), args.host, args.port), min(15, left)
                    )
                    await asyncio.wait_for(conn.ready, max(0.1, min(30, deadline - time.monotonic())))
                    conns.append(conn)
                    return True
                except Exception as exc:  # noqa: BLE001 - counted and retried
                    note(st.connect_failures, repr(exc)[:120])
                    if conn is not None and conn.tr is not None:
                        conn.tr.abort()
                    if "closed 4" in str(exc):  # an application close code: retrying will not help
                        return False
            await asyncio.sleep(0.2 * (attempt + 1))
        return False

    t0 = time.monotonic()

    async def progress():
        while True:
            await asyncio.sleep(5)
            print(f"progress t={time.monotonic() - t0:.0f}s connected={len(conns)} failures={st.connect_failures}",
                  file=sys.stderr, flush=True)  # fmt: skip

    reporter = asyncio.ensure_future(progress())
    ok = await asyncio.gather(*(one(i) for i in range(args.n)))
    reporter.cancel()
    info = {
        "connected": sum(ok),
        "seconds": round(time.monotonic() - t0, 2),
        "failures": st.connect_failures,
        "errors": st.errors,
        "close_codes": st.close_codes,
    }
    print("CONNECTED " + json.dumps(info), flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "GO":
        return
    early = min(1.0, args.warmup)
    await asyncio.sleep(args.warmup - early)
    st.measuring = True
    await asyncio.sleep(early)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.monotonic()
    await asyncio.sleep(args.duration)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    w1 = time.monotonic()
    await asyncio.sleep(GRACE)
    st.measuring = False
    for suffix, values in (("", lat), (".pub", pubs), (".seq", frame_seqs), (".conn", frame_conns)):
        with open(args.raw + suffix, "wb") as f:
            values.tofile(f)
    per_stream = {s: sum(1 for c in conns if c.stream == s) for s in STREAMS}
    cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / (w1 - w0)
    result = {
        "connected": len(conns),
        "open_at_end": sum(1 for c in conns if not c.closed),
        "per_stream": per_stream,
        "lost_after_ready": st.lost_after_ready,
        "close_codes": st.close_codes,
        "errors": st.errors,
        "msgs": len(lat),
        "window_s": round(w1 - w0, 3),
        "conns": sorted(c.index for c in conns),
        "heartbeats": st.heartbeats,
        "feed_frames": st.feed_frames,
        "other_frames": st.other_frames,
        "bad_frames": st.bad_frames,
        "snapshot_bytes": st.snapshot_bytes,
        "cpu_s_per_s": round(cpu, 3),
        "maxrss_mb": round(ru1.ru_maxrss / 1024, 1),
    }
    print("RESULT " + json.dumps(result), flush=True)
    # Stay connected (idle-cost measurement) until told "END" or stdin closes.
    await loop.run_in_executor(None, sys.stdin.readline)
    result_idle = {"open_at_end": sum(1 for c in conns if not c.closed), "close_codes": st.close_codes,
                   "heartbeats": st.heartbeats}  # fmt: skip
    print("IDLE " + json.dumps(result_idle), flush=True)
    for c in conns:
        if c.tr is not None:
            c.tr.abort()


try:
    import uvloop
except ImportError:  # the plain loop works too, at a higher client cost
    asyncio.run(main())
else:
    uvloop.run(main())
