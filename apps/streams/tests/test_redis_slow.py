"""Redis slow, not down: paused for 20 s (`CLIENT PAUSE 20000 ALL`), or one
stalled connection (the channel layer's pub/sub connection through a proxy
that stops forwarding it, or the whole proxy stopped with SIGSTOP). Real
daphne, a real runworker publishing the simulator's frames, real Redis, real
clients. What a client sees: no socket stays connected but silent for more
than 30 s, new connects are answered with 1013 within 5 s (or stream), and
everything streams again within 30 s after Redis answers: a socket gets a
snapshot through the fan-out, not only the one sent on connect."""

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed

from apps.accounts.models import ApiToken
from conftest import WORKER_ENV

from .clients import connect, fanned_out, recv_json

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

SILENT_MAX = 30.0
REFUSED_WITHIN = 5.0
BACK_WITHIN = 30.0


class Watched:
    """One open socket: when each data frame came (heartbeats come from the
    process itself, not through Redis: they do not count), and how it ended."""

    def __init__(self, ws):
        self.ws = ws
        self.frames = [time.monotonic()]
        self.closed = None  # (monotonic, code)
        self.task = asyncio.ensure_future(self._read())

    async def _read(self):
        try:
            while True:
                if '"heartbeat"' not in await self.ws.recv():
                    self.frames.append(time.monotonic())
        except ConnectionClosed as exc:
            self.closed = (time.monotonic(), exc.rcvd.code if exc.rcvd else None)

    def longest_silence(self, until):
        moments = [*self.frames, self.closed[0] if self.closed else until]
        return max(b - a for a, b in itertools.pairwise(moments))


async def _attempt(url, raw, fanned=False):
    """One connect: ('open', seconds to the first snapshot, Watched) or
    (close code, seconds, None). `fanned`: open only once a snapshot came
    through the fan-out too (a higher seq than the one sent on connect)."""
    started = time.monotonic()
    try:
        ws = await connect(url + "/ws/market", raw, open_timeout=REFUSED_WITHIN + 5).__aenter__()
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__, time.monotonic() - started, None
    try:
        if fanned:
            await fanned_out(ws, SILENT_MAX + 5)
            return "open", time.monotonic() - started, Watched(ws)
        while True:
            frame = await recv_json(ws, SILENT_MAX + 5)
            if frame["type"] == "snapshot":
                return "open", time.monotonic() - started, Watched(ws)
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), time.monotonic() - started, None
    except TimeoutError:
        await ws.close()
        return "silent", time.monotonic() - started, None


async def _token(cap=100):
    """A token (and user) allowed `cap` sockets."""
    from django.contrib.auth import get_user_model

    from apps.accounts.models import UserLimits

    def make():
        user = get_user_model().objects.create_user("slow", "slow@example.com", "pw-0123456789")
        limits = UserLimits.for_user(user)
        limits.max_connections = cap
        limits.save()
        return ApiToken.issue(user, label="slow", max_connections=cap)[1]

    return await sync_to_async(make)()


async def _through_fault(server, raw, fault_seconds, start_fault, end_fault):
    """Opens a socket, injects the fault, tries a connect every second while
    it lasts, ends it, then reconnects like a client with a short backoff.
    Returns what a client saw."""
    first = await _attempt(server.ws_url, raw, fanned=True)
    assert first[0] == "open", first
    watched = first[2]
    await asyncio.sleep(1)
    start_fault()
    began = time.monotonic()
    attempts = []
    pending = []
    while time.monotonic() - began < fault_seconds - 1:
        pending.append((time.monotonic() - began, asyncio.ensure_future(_attempt(server.ws_url, raw))))
        await asyncio.sleep(1)
    await asyncio.sleep(max(0.0, began + fault_seconds - time.monotonic()))
    end_fault()
    ended = time.monotonic()
    for at, task in pending:
        attempts.append((at, *await task))
    while True:  # a client retrying with a short backoff, until the fan-out reaches it
        result, _, again = await _attempt(server.ws_url, raw, fanned=True)
        if result == "open":
            back = time.monotonic() - ended
            break
        assert time.monotonic() - ended < BACK_WITHIN, f"not streaming {BACK_WITHIN} s after the fault ended"
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)
    sockets = [watched] + [a[3] for a in attempts if a[3] is not None] + [again]
    now = time.monotonic()
    silences = [s.longest_silence(now) for s in sockets]
    for s in sockets:
        if s.closed is None:
            await s.ws.close()
    return {"first": watched, "attempts": attempts, "back": back, "silences": silences, "began": began}


def _report(name, seen):
    first = seen["first"]
    closed = f"closed {first.closed[1]} after {first.closed[0] - seen['began']:.1f} s" if first.closed else "kept open"
    lines = [f"\n{name}: the socket open before the fault: {closed}; longest silence of any socket "
             f"{max(seen['silences']):.1f} s; streaming again {seen['back']:.1f} s after the fault ended"]  # fmt: skip
    lines += [f"  connect at +{at:.0f} s: {result} in {took:.2f} s" for at, result, took, _ in seen["attempts"]]
    print("\n".join(lines))


def _assert_client_view(seen):
    assert max(seen["silences"]) <= SILENT_MAX, seen["silences"]
    for at, result, took, _ in seen["attempts"]:
        # Refused quickly, or let in and streaming (it shows in the silences).
        assert result == "open" or (result == 1013 and took <= REFUSED_WITHIN), (at, result, took)
    assert seen["back"] <= BACK_WITHIN


async def test_redis_paused_for_20_s(processes, own_redis):
    raw = await _token()
    processes.worker(REDIS_URL=own_redis.url, **WORKER_ENV)
    server = processes.daphne(REDIS_URL=own_redis.url, WS_MAX_CONNECTIONS_PER_IP=100)
    client = redis.Redis.from_url(own_redis.url)

    seen = await _through_fault(
        server, raw, 20, lambda: client.execute_command("CLIENT", "PAUSE", 20000, "ALL"), lambda: None
    )
    client.close()
    _report("CLIENT PAUSE 20000 ALL", seen)
    _assert_client_view(seen)
    assert seen["first"].closed and seen["first"].closed[1] == 1013  # told to come back, not left silent


class Proxy:
    """tests/redis_proxy.py in a process of its own (so that it can be stopped)."""

    def __init__(self, target_port, delay=0.0):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apps.streams.tests.redis_proxy", str(target_port), "--delay", str(delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("listening"), line
        self.port = int(line.split()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def proxy(own_redis):
    found = Proxy(own_redis.port)
    yield found
    found.stop()


@pytest.mark.parametrize("stall", ["layer", "everything"])
async def test_one_stalled_connection(processes, own_redis, proxy, stall):
    """`layer`: the channel layer's pub/sub connection stops for good (a
    connection a firewall dropped without a word), while Redis and every
    other connection answer: only a round trip through the layer can tell.
    Watched for longer than SILENT_MAX. `everything`: the proxy is stopped
    with SIGSTOP for 20 s: every connection and every new connect hangs."""
    raw = await _token()
    processes.worker(REDIS_URL=own_redis.url, **WORKER_ENV)
    server = processes.daphne(REDIS_URL=proxy.url, WS_MAX_CONNECTIONS_PER_IP=100)
    if stall == "layer":
        seen = await _through_fault(server, raw, SILENT_MAX + 5, lambda: proxy.signal(signal.SIGUSR1), lambda: None)
    else:
        stop, cont = (lambda: proxy.signal(signal.SIGSTOP)), (lambda: proxy.signal(signal.SIGCONT))
        seen = await _through_fault(server, raw, 20, stop, cont)
    _report(f"stalled: {stall}", seen)
    _assert_client_view(seen)
