"""SENTINEL FAILOVER, and a master killed, under 2,000 clients (issue 19, item 2).

A master, a replica and three Sentinels on loopback (tests/sentinel_cluster.py);
a real daphne and a simulator runworker, both on `REDIS_URL=redis+sentinel://…`;
2,000 stream sockets from two client processes (tests/failover_clients.py).
Then `SENTINEL FAILOVER` (or `kill -9` of the master, which the Sentinels
replace after their down-after-milliseconds of 1 s), and what the clients see:

- streaming resumes within 30 s: every socket gets a snapshot published
  after the web process and the worker are on the new master (so it came
  through it), and one published after the Sentinels demoted the old master;
- no socket ever sees `seq` go backwards within an epoch;
- no socket is closed (the watchdog's REDIS_DOWN_AFTER outlasts a failover);
- after SENTINEL FAILOVER, the web process and the worker move to the new
  master before the Sentinels demote the old one (which takes writes until
  then, and loses them);
- after WS_LEASE_TTL the lease sets on the new master hold exactly the open
  sockets.

Every timer is at its default except: WS_LEASE_TTL 12 s and
WS_HEARTBEAT_INTERVAL 3 s (which renews the leases), so that the lease check
waits seconds instead of 90 s (a lease still outlasts the kill's 3 s outage
several times over, as 90 s outlasts Sentinel's default 30 s); the per-IP caps, raised because every client is
127.0.0.1 (as bench/run.py does); the token's and the user's caps (2,000); and
the Sentinels' own timers (down after 1 s, tests/sentinel_cluster.py).
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from apps.accounts.models import ALL_STREAMS, NEVER, ApiToken, UserLimits
from conftest import ROOT, WORKER_ENV
from stocktracker.lib import catalogue, keys
from tests.sentinel_cluster import SentinelCluster

pytestmark = pytest.mark.e2e

CLIENTS = 2000
CLIENT_PROCESSES = 2
LEASE_TTL = 12
HEARTBEAT = 3
BIG = 1_000_000
RESUME_WITHIN = 30.0


@pytest.fixture
def cluster(tmp_path):
    with SentinelCluster(tmp_path / "redis") as found:
        yield found


class Clients:
    """Client processes (tests/failover_clients.py); all stopped at teardown."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs = []

    def start(self, port, n, token):
        env = {**os.environ, "TOKEN": token, "PYTHONUNBUFFERED": "1"}
        log = open(self.tmp_path / f"clients-{len(self.procs)}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "tests/failover_clients.py", "--port", str(port), "--n", str(n)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        log.close()
        proc.lines = queue.Queue()
        threading.Thread(target=lambda: [proc.lines.put(line) for line in proc.stdout], daemon=True).start()
        self.procs.append(proc)
        return proc

    def ask(self, command, answer, timeout=30):
        """Send `command` to every client process; their `answer {json}` lines."""
        for proc in self.procs:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        return [self.read(proc, answer, timeout) for proc in self.procs]

    def read(self, proc, answer, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = proc.lines.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            if line.startswith(answer + " "):
                return json.loads(line[len(answer) + 1 :])
        raise AssertionError(f"no {answer} from the clients within {timeout} s (exit code {proc.poll()})")

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def clients(tmp_path):
    found = Clients(tmp_path)
    yield found
    found.stop()


def _until(what, check, timeout, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _now_ms():
    return time.time() * 1000.0


def _on_the_new_master(cluster, new, since_ms):
    """The web process listens on the new master and the worker stores frames
    published after `since_ms` there."""
    with cluster.data(new[1]) as master:
        groups = [f"stk__group__{keys.stream_group(stream)}" for stream in catalogue.STREAMS]
        listening = master.execute_command("PUBSUB", "NUMSUB", *groups)[1::2]
        latest = [master.get(keys.latest(stream)) for stream in catalogue.STREAMS]
    fresh = [raw is not None and json.loads(raw)["published_ms"] >= since_ms for raw in latest]
    return all(listening) and all(fresh)


def _leases(cluster, names):
    """{lease set: (live members, members)} on the master."""
    with cluster.data(cluster.master[1]) as master:
        seconds, micros = master.time()
        now_ms = seconds * 1000 + micros // 1000
        found = {}
        for name in names:
            found[name] = (master.zcount(keys.lease_set(name), now_ms, "+inf"), master.zcard(keys.lease_set(name)))
        return found


def _token_for(owner):
    limits = UserLimits.for_user(owner)
    limits.max_connections = CLIENTS
    limits.save()
    return ApiToken.issue(owner, label="failover", streams=list(ALL_STREAMS), expires_in=NEVER, max_connections=CLIENTS)


@pytest.mark.parametrize("fault", ["sentinel failover", "kill -9 the master"])
def test_2000_clients_stream_on_across_a_failover(fault, cluster, processes, clients, owner):
    token, raw = _token_for(owner)
    redis = {"REDIS_URL": cluster.url}
    server = processes.daphne(
        **redis,
        WS_LEASE_TTL=LEASE_TTL,
        WS_HEARTBEAT_INTERVAL=HEARTBEAT,
        WS_MAX_CONNECTIONS_PER_IP=BIG,
        WS_MAX_UNAUTHENTICATED_PER_IP=BIG,
    )
    processes.worker(**WORKER_ENV, **redis)
    for _ in range(CLIENT_PROCESSES):
        clients.start(server.port, CLIENTS // CLIENT_PROCESSES, raw)
    connected = [clients.read(proc, "CONNECTED", 180) for proc in clients.procs]
    assert sum(c["connected"] for c in connected) == CLIENTS, connected
    _until(
        "a snapshot on every socket",
        lambda: sum(s["with_snapshot"] for s in clients.ask("STATUS", "STATUS")) == CLIENTS,
        60,
        every=1,
    )
    # Every socket's lease renewed at least once since its process registered
    # it: one that took seconds to connect in the storm has only the rest of
    # its first lease, and an outage is not the moment to run that out.
    time.sleep(2 * HEARTBEAT)

    t0 = _now_ms()
    old = cluster.master
    if fault == "sentinel failover":
        new = cluster.failover()
    else:
        cluster.signal(old, signal.SIGKILL)
        new = cluster.wait_promoted(old)
    t1 = _now_ms()
    _until("the web process and the worker on the new master", lambda: _on_the_new_master(cluster, new, t1), 20)
    marks = {"named": t1, "moved": _now_ms()}
    if fault == "sentinel failover":
        old_still_master = cluster.role(old[1]) == "master"
        cluster.wait_demoted(old)
        marks["demoted"] = _now_ms()
    time.sleep(3)  # frames published after the last mark reach every socket
    seen = clients.ask(f"REPORT {t0} " + " ".join(f"{name}={t}" for name, t in marks.items()), "REPORT")
    print(f"\n{fault}: at 0 s; " + ", ".join(f"{name} at {(t - t0) / 1000:.1f} s" for name, t in marks.items()))
    for part in seen:
        print("clients:", json.dumps(part))

    if fault == "sentinel failover":
        assert old_still_master, "the web process and the worker moved only once the Sentinels demoted the old master"
    for part in seen:
        assert part["open"] == part["sockets"] and part["close_codes"] == {}, part
        for mark in marks:
            if mark != "named":
                assert part[mark]["none"] == 0 and part[mark]["first_frame_s"]["max"] <= RESUME_WITHIN, part
        assert part["regressions"] == 0, part

    # Whatever the leases were on either master, after one TTL they are the open sockets.
    time.sleep(max(0.0, (max(marks.values()) + (LEASE_TTL + HEARTBEAT) * 1000 - _now_ms()) / 1000))
    open_now = sum(s["open"] for s in clients.ask("STATUS", "STATUS"))
    names = [keys.subscribers(stream) for stream in catalogue.STREAMS]
    names += [keys.token(token.id), keys.user(owner.pk), keys.ip("127.0.0.1")]
    leases = _leases(cluster, names)
    print(f"open sockets {open_now}; leases (live, members): {leases}")
    assert open_now == CLIENTS
    assert sum(leases[name][0] for name in names[:3]) == open_now
    assert sum(leases[name][1] for name in names[:3]) == open_now
    for name in names[3:]:
        assert leases[name] == (open_now, open_now), name
