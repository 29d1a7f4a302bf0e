"""A leader paused past its lock's TTL never publishes (a snapshot or a feed state) after the standby took over.

Real runworker processes, real Redis, a real WebSocket client through daphne.
The leader reaches Redis through a loopback proxy that, once armed, holds
back one step of its next publish (a command already in flight on a slow
network): the store of the latest snapshot, or its send to the sockets. The
test stops the leader with SIGSTOP while it waits, lets
the lock expire and the standby take over and publish, then lets the held
command reach Redis and resumes the leader. Unfenced, the late store puts
the old snapshot back as the latest; the late send reaches the sockets after
newer frames unless they drop what is not newer than what they sent.
"""

import asyncio
import json
import os
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import websockets
from django.conf import settings

from apps.accounts.models import ApiToken
from stocktracker.lib import redis as redis_lib

from .test_failover import TOOK, WORKER_ENV, log_of, wait_for

pytestmark = pytest.mark.e2e

# The two steps of a publish: storing the latest snapshot, and sending it to
# the sockets (the channel layer's PUBLISH to the stream's group).
STORE = b"stk:latest:market"
SEND = b"__group__stream.market"


class HoldingProxy:
    """TCP proxy to Redis that, once armed, holds back the next command
    containing `held` until `release()`."""

    def __init__(self, redis_url, held):
        self.held = held
        target = urlsplit(redis_url)
        self.target = (target.hostname, target.port or 6379)
        self.db = target.path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.holding = threading.Event()
        self.released = threading.Event()
        self.sockets = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}{self.db}"

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, from_client):
        while True:
            try:
                chunk = src.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                if not from_client:
                    dst.close()
                return  # a client that gave up leaves its held command on its way to Redis
            if from_client and self.armed.is_set() and self.held in chunk:
                self.armed.clear()
                self.holding.set()
                self.released.wait()
            try:
                dst.sendall(chunk)
            except OSError:
                return

    def release(self):
        self.released.set()

    def close(self):
        self.released.set()
        for sock in self.sockets:
            sock.close()


@pytest.fixture(params=[STORE, SEND], ids=["store", "send"])
def proxy(request):
    holding = HoldingProxy(settings.REDIS_URL, request.param)
    yield holding
    holding.close()


def test_a_leader_resumed_after_sigstop_past_its_ttl_publishes_nothing_and_clients_never_go_back(
    processes, owner, proxy
):
    _, raw = ApiToken.issue(owner, label="fence")
    env = {**WORKER_ENV, "FEED_LEADER_TTL": "3"}
    leader = processes.worker(**env, REDIS_URL=proxy.url)
    wait_for(lambda: TOOK in log_of(leader), 30, "the first worker to lead")
    standby = processes.worker(**env)
    web = processes.daphne()
    frames = []

    async def watch(ws):
        async for text in ws:
            frame = json.loads(text)
            if frame["type"] == "snapshot":
                frames.append((frame["epoch"], frame["seq"], frame["source_ms"], time.monotonic()))

    async def until(condition, timeout, what):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def main():
        async with websockets.connect(
            f"{web.ws_url}/ws/market", additional_headers={"Authorization": f"Bearer {raw}"}, open_timeout=10
        ) as ws:
            watcher = asyncio.ensure_future(watch(ws))
            await until(lambda: len(frames) >= 3, 30, "snapshots from the leader")
            proxy.armed.set()
            await until(proxy.holding.is_set, 10, "the leader to publish a snapshot")
            os.killpg(leader.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                await until(lambda: TOOK in log_of(standby), 15, "the standby to take the lock")
                took = time.monotonic() - stopped
                seen = len(frames)
                await until(lambda: len(frames) >= seen + 3, 15, "snapshots from the new leader")
                # The new leader holds still while the old one's command lands.
                os.killpg(standby.pid, signal.SIGSTOP)
                proxy.release()
                await asyncio.sleep(0.3)
                stored = json.loads(store.get("stk:latest:market"))
            finally:
                proxy.release()
                os.killpg(standby.pid, signal.SIGCONT)
                os.killpg(leader.pid, signal.SIGCONT)
            resumed = time.monotonic()
            await asyncio.sleep(3)
            watcher.cancel()
            return took, resumed, stored

    store = redis_lib.sync_client()
    try:
        took, resumed, stored = asyncio.run(main())
        latest = json.loads(store.get("stk:latest:market"))
    finally:
        store.close()
    assert took <= 3 + 2, f"standby took {took:.1f} s"
    epochs = {epoch for epoch, *_ in frames}
    assert len(epochs) == 1
    seqs = [seq for _, seq, _, _ in frames]
    assert seqs == sorted(set(seqs)), f"seq went backwards or repeated: {seqs}"
    sources = [source for _, _, source, _ in frames]
    assert sources == sorted(sources), "an older snapshot reached the client after a newer one"
    after = [source for *_, source, at in frames if at >= resumed]
    assert after, "the new leader kept publishing after the old one resumed"
    # Compare the data's age, not seq: an unfenced late store would take a new, higher seq.
    newest_seen = max(source for _, _, source, at in frames if at < resumed)
    assert stored["source_ms"] >= newest_seen, "the old leader's late write replaced a newer latest snapshot"
    assert latest["source_ms"] >= max(sources), "the stored latest snapshot is older than one already sent"


# The feed-state write (`state.feed_set`): its record is JSON with a space
# after the colon, unlike the compact frames the channel layer carries.
FEED_STATE = b'{"state": "'


def test_a_leader_resumed_after_sigstop_past_its_ttl_writes_no_feed_state(processes, owner):
    _, raw = ApiToken.issue(owner, label="fence")
    proxy = HoldingProxy(settings.REDIS_URL, FEED_STATE)
    proxy.armed.set()  # the leader's first feed-state write is held
    env = {**WORKER_ENV, "FEED_LEADER_TTL": "3"}
    feeds = []  # (since_ms, received at ms) of every `feed` frame

    async def watch(ws):
        async for text in ws:
            frame = json.loads(text)
            if frame["type"] == "feed":
                feeds.append((frame["since_ms"], time.time() * 1000))

    def stored():
        record = store.get("stk:feed")
        return json.loads(record) if record else None

    async def until(condition, timeout, what):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def main():
        web = processes.daphne()
        async with websockets.connect(
            f"{web.ws_url}/ws/market", additional_headers={"Authorization": f"Bearer {raw}"}, open_timeout=10
        ) as ws:
            watcher = asyncio.ensure_future(watch(ws))
            leader = processes.worker(**env, REDIS_URL=proxy.url)
            await until(proxy.holding.is_set, 30, "the leader to write its feed state")
            os.killpg(leader.pid, signal.SIGSTOP)
            stopped_ms = time.time() * 1000
            standby = processes.worker(**env)
            try:
                await until(lambda: TOOK in log_of(standby), 20, "the standby to take the lock")
                await until(lambda: (stored() or {}).get("since_ms", 0) >= stopped_ms, 10, "the standby's feed state")
                taken_ms, standby_record = time.time() * 1000, stored()
                os.killpg(standby.pid, signal.SIGSTOP)  # holds still while the old write lands
                proxy.release()
                await asyncio.sleep(0.5)
                after_release = stored()
            finally:
                proxy.release()
                os.killpg(standby.pid, signal.SIGCONT)
                os.killpg(leader.pid, signal.SIGCONT)
            await asyncio.sleep(3)  # the old leader gets its answer and carries on
            watcher.cancel()
            return stopped_ms, taken_ms, standby_record, after_release, leader

    store = redis_lib.sync_client()
    try:
        stopped_ms, taken_ms, standby_record, after_release, leader = asyncio.run(main())
        final = stored()
    finally:
        store.close()
        proxy.close()
    late = [since for since, at in feeds if at >= taken_ms and since < stopped_ms]
    offset = after_release["since_ms"] - stopped_ms
    print(f"\nstored feed state once the old write landed: since_ms {offset:+.0f} ms from the SIGSTOP; "
          f"late feed frames from the old leader: {len(late)}")  # fmt: skip
    assert after_release == standby_record, "the old leader's late write replaced the new leader's feed state"
    assert final["since_ms"] >= standby_record["since_ms"], "the old leader wrote its feed state after it resumed"
    assert not late, f"clients got {len(late)} feed frame(s) from the old leader after the standby took over"
    # Fenced at its write, or (its Redis call timed out meanwhile) at its next lock renewal.
    stepped_down = ("another process took the feed leader lock", "lost the feed leader lock")
    assert any(line in log_of(leader) for line in stepped_down), "the old leader did not step down"
