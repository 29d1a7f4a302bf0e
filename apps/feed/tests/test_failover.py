"""One leader among real `manage.py runworker` processes: kill -9 and SIGTERM."""

import asyncio
import json
import os
import signal
import time

import pytest

from apps.feed.leadership import LOCK_KEY
from conftest import WORKER_ENV
from stocktracker.lib import redis as redis_lib
from stocktracker.lib.state import get_state

pytestmark = pytest.mark.e2e

TOOK = "took the feed leader lock"


def hold_subscriber(stream="market"):
    async def acquire():
        await get_state().lease_acquire("watcher", [(f"stream:{stream}", None)], 300)

    asyncio.run(acquire())


def latest_seq(client, stream="market"):
    raw = client.get(f"stk:latest:{stream}")
    return json.loads(raw)["seq"] if raw else 0


def log_of(proc):
    return proc.log_path.read_text()


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def two_workers(processes):
    hold_subscriber()
    client = redis_lib.sync_client()
    workers = [processes.worker(**WORKER_ENV), processes.worker(**WORKER_ENV)]
    wait_for(lambda: latest_seq(client) >= 2, 30, "the first snapshots")
    leaders = [w for w in workers if TOOK in log_of(w)]
    assert len(leaders) == 1, "exactly one worker leads"
    standby = next(w for w in workers if w is not leaders[0])
    yield leaders[0], standby, client
    client.close()


def test_a_standby_takes_over_within_20_s_of_kill_9_and_seq_never_goes_back(two_workers):
    leader, standby, client = two_workers
    before = latest_seq(client)
    os.killpg(leader.pid, signal.SIGKILL)
    killed = time.monotonic()
    seen = [before]
    while time.monotonic() - killed < 25:
        seen.append(latest_seq(client))
        if TOOK in log_of(standby) and seen[-1] > before:
            break
        time.sleep(0.1)
    took = time.monotonic() - killed
    assert TOOK in log_of(standby), log_of(standby)
    assert took <= 20, f"standby took {took:.1f} s"
    assert seen == sorted(seen), "seq went backwards"
    assert seen[-1] > before


def test_sigterm_stops_the_leader_within_seconds_and_the_standby_takes_over_at_once(two_workers):
    leader, standby, client = two_workers
    os.killpg(leader.pid, signal.SIGTERM)
    stopped = time.monotonic()
    assert leader.wait(timeout=5) == 0
    assert "released the feed leader lock" in log_of(leader)
    wait_for(lambda: TOOK in log_of(standby), 5, "the standby to take the lock")
    assert time.monotonic() - stopped < 5
    assert client.get(LOCK_KEY) is not None
