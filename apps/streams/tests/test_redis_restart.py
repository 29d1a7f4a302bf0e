"""Redis restarted without its data (`SHUTDOWN NOSAVE`, then a new
redis-server on the same port, at once or after 10 s down): every stream's
counter, latest frame, lease and live-session entry is gone.

Two real daphnes, the real feed worker on the simulator, 30 clients per
stream on each daphne that reconnect like well-behaved clients (a fifth of
the market ones reconnect every 2 s, as restarted clients do), a new socket
every 0.5 s on each daphne, and 30 more clients per stream and daphne 15 s
after Redis answers. What they see once Redis answers again:
- every client is streaming again within RESUMED_WITHIN: a fanned-out
  snapshot (not only the one sent on connect), of a new epoch;
- within 30 s every client receives at least 20 fanned-out snapshots in the
  next 30 s;
- from SETTLED seconds on, no socket is refused or closed with 1013, and
  every new socket gets its snapshot.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from channels.db import database_sync_to_async

from conftest import ROOT, WORKER_ENV

from .clients import connect, outcome, recv_json

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

STREAMS = ("market", "foreign", "index")
PER_STREAM = 30
BACK_WITHIN = 30.0  # seconds after Redis answers by which every client streams
WINDOW = 30.0  # ... and then, for this long,
FANNED_OUT_MIN = 20  # gets at least this many fanned-out snapshots
RESUMED_WITHIN = 10.0  # seconds to every client's first fanned-out snapshot of the new epoch
SETTLED = 3.0  # seconds after Redis answers from which nothing is refused
LATE_AT = 15.0  # seconds after Redis answers when the second batch of clients connects


def _token(cap):
    from django.contrib.auth import get_user_model

    from apps.accounts.models import ApiToken, UserLimits

    user = get_user_model().objects.create_user("follower", "follower@example.com", "pw-0123456789")
    limits = UserLimits.for_user(user)
    limits.max_connections = cap
    limits.save()
    return ApiToken.issue(user, label="follower", max_connections=cap)[1]


class Followers:
    """apps/streams/tests/follow_clients.py in a process of its own, its lines in a file."""

    def __init__(self, tmp_path, ports, token, *args, name=""):
        self.path = tmp_path / f"followers{name.strip(':')}.jsonl"
        command = [sys.executable, "-m", "apps.streams.tests.follow_clients", "--ports", ",".join(map(str, ports))]
        with open(self.path, "w") as out:
            self.proc = subprocess.Popen(
                [*command, "--name", name, *args],
                cwd=ROOT,
                env={**os.environ, "STK_TOKEN": token},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def records(self):
        found = []
        for line in self.path.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                pass  # a traceback, or a line being written
        return found

    def wait_ready(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("ready" in r for r in self.records()):
                return
            assert self.proc.poll() is None, self.path.read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError(f"clients not all streaming within {timeout} s:\n{self.path.read_text()[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def followers(tmp_path):
    started = []

    def start(ports, token, *args, name=""):
        found = Followers(tmp_path, ports, token, *args, name=name)
        started.append(found)
        return found

    yield start
    for found in started:
        found.stop()


def fanned_out(records):
    """[(time, client, epoch)] of the snapshots that reached a client after
    the one sent on connect and moved its socket forward (a higher seq or a
    new epoch)."""
    found = []
    last = {}
    for r in records:
        if "close" in r:
            last.pop(r["c"], None)
        if "s" not in r:
            continue
        before, last[r["c"]] = last.get(r["c"]), (r["e"], r["s"])
        if not r["n"] and before is not None and (r["e"] != before[0] or r["s"] > before[1]):
            found.append((r["t"], r["c"], r["e"]))
    return found


def epochs_before(records, answered):
    """{client: the epoch of its last snapshot before Redis went away}."""
    return {r["c"]: r["e"] for r in records if "s" in r and r["t"] < answered - 1}


@pytest.mark.parametrize("down", [0, 10])
def test_every_client_streams_again_after_redis_restarts_empty(own_redis, processes, followers, down):
    token = _token(2000)
    env = {"REDIS_URL": own_redis.url, "WS_MAX_CONNECTIONS_PER_IP": 2000, "WS_MAX_UNAUTHENTICATED_PER_IP": 2000}
    processes.worker(**env, **WORKER_ENV)
    servers = [processes.daphne(**env), processes.daphne(**env)]
    ports = [s.port for s in servers]
    clients = followers(ports, token, "--per-stream", str(PER_STREAM), "--churn-every", "2")
    clients.wait_ready()
    time.sleep(5)

    answered = own_redis.restart_empty(down)
    probes = followers(ports, token, "--probe-every", "0.5", name="probe")
    time.sleep(max(0.0, answered + LATE_AT - time.time()))
    late = followers(ports, token, "--per-stream", str(PER_STREAM), name="late:")
    time.sleep(max(0.0, answered + BACK_WITHIN + WINDOW + 1 - time.time()))
    for group in (clients, late, probes):
        group.stop()

    records = sorted(clients.records() + late.records(), key=lambda r: r["t"])
    names = {f"{batch}{port}/{stream}/{i}" for batch in ("", "late:") for port in ports for stream in STREAMS
             for i in range(PER_STREAM)}  # fmt: skip
    before = epochs_before(records, answered)
    fanned = fanned_out(records)
    window = (answered + BACK_WITHIN, answered + BACK_WITHIN + WINDOW)
    counts = {name: 0 for name in names}
    resumed = {}  # client -> seconds from Redis answering to its first fanned-out snapshot of a new epoch
    for at, name, epoch in fanned:
        if window[0] <= at < window[1]:
            counts[name] += 1
        if at >= answered and name not in resumed and epoch != before.get(name):
            resumed[name] = at - answered
    refused = [(round(r["t"] - answered, 1), r["c"], r["close"]) for r in records
               if r.get("close") == 1013 and r["t"] >= answered + SETTLED]  # fmt: skip
    probed = [(round(p["t"] - answered, 1), p["probe"], p["result"]) for p in probes.records() if "probe" in p]
    missed = [p for p in probed if p[0] >= SETTLED and p[2] != "open"]

    lines = [f"\nRedis restarted empty after {down} s down; {len(names)} clients on 2 daphnes"]
    for batch in ("", "late:"):
        for port in ports:
            for stream in STREAMS:
                mine = sorted(n for n in names if n.startswith(f"{batch}{port}/{stream}/"))
                got = sorted(counts[n] for n in mine)
                waits = [resumed.get(n, float("inf")) for n in mine]
                lines.append(
                    f"  {batch or 'first:'}{port} {stream}: fanned-out snapshots in +{window[0] - answered:.0f}.."
                    f"+{window[1] - answered:.0f} s min {got[0]} median {got[len(got) // 2]}"
                    + ("" if batch else f"; first of the new epoch after {max(waits):.1f} s (max)")
                )
    lines.append(f"  new sockets from +{SETTLED:.0f} s: {sum(1 for p in probed if p[0] >= SETTLED)}, "
                 f"without a snapshot: {missed}; before: {[p for p in probed if p[0] < SETTLED]}")  # fmt: skip
    lines.append(f"  sockets closed 1013 from +{SETTLED:.0f} s: {refused}")
    print("\n".join(lines))

    first_batch = {n for n in names if not n.startswith("late:")}
    slow = {n: resumed.get(n) for n in first_batch if resumed.get(n, float("inf")) > RESUMED_WITHIN}
    assert not slow, f"{len(slow)} clients not streaming the new epoch within {RESUMED_WITHIN} s: {sorted(slow)[:5]}"
    short = {n: c for n, c in counts.items() if c < FANNED_OUT_MIN}
    assert not short, f"{len(short)} clients got fewer than {FANNED_OUT_MIN}: {sorted(short.items())[:10]}"
    assert not missed, missed
    assert not refused, refused


async def test_a_quiet_process_writes_its_leases_again_at_once(own_redis, processes, issue):
    """No socket connects after the restart: the process itself must see
    that Redis lost its data. Until its leases are back, the feed sees no
    subscriber (and publishes nothing) and no connection limit holds."""
    _, raw = await database_sync_to_async(issue)(max_connections=3)
    env = {"REDIS_URL": own_redis.url}
    processes.worker(**env, **WORKER_ENV)
    server = processes.daphne(**env)
    sockets = {}
    for stream in STREAMS:
        ws = sockets[stream] = await connect(f"{server.ws_url}/ws/{stream}", raw).__aenter__()
        assert (await recv_json(ws, 5))["type"] == "welcome"
    before = {stream: (await _snapshot(ws, 10))["epoch"] for stream, ws in sockets.items()}

    answered = await asyncio.to_thread(own_redis.restart_empty)
    resumed = {}
    for stream, ws in sockets.items():  # each socket: a fanned-out snapshot of the new epoch
        try:
            while (await _snapshot(ws, answered + RESUMED_WITHIN - time.time()))["epoch"] == before[stream]:
                pass
        except TimeoutError:
            pytest.fail(f"{stream}: no snapshot of a new epoch within {RESUMED_WITHIN} s of Redis answering")
        resumed[stream] = round(time.time() - answered, 1)
    result, _ = await outcome(server.ws_url, raw)  # the token's cap (3) holds again
    print(f"\nstreaming the new epoch after {resumed} s; a 4th socket on a token capped at 3: {result}")
    assert result == 4100
    for ws in sockets.values():
        await ws.close()


async def _snapshot(ws, timeout):
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "snapshot":
                return frame
