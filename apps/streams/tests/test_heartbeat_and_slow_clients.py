"""Heartbeats keep idle sockets alive; a client that stops reading is closed
within WS_HEARTBEAT_INTERVAL + WS_HEARTBEAT_TIMEOUT and pins little memory;
a well-behaved client that never sends anything is never closed."""

import contextlib
import time

import pytest
from asgiref.sync import sync_to_async

from .clients import connect, established, raw_non_reader, recv_json, rss_mb
from .conftest import publishing, set_caps

pytestmark = pytest.mark.django_db(transaction=True)

INTERVAL, TIMEOUT = 2, 2
SLACK = 3  # seconds a loaded CI machine may add to the close of a non-reader
ENV = {"WS_HEARTBEAT_INTERVAL": INTERVAL, "WS_HEARTBEAT_TIMEOUT": TIMEOUT, "WS_MAX_CONNECTIONS_PER_IP": 1000}
BIG = {"rows": [{"s": f"S{i:03d}", "p": 12345 + i, "v": 9_000_000 + i} for i in range(600)]}  # ~20 KB


def flowing(hz=10):
    """Publishes a ~20 KB market snapshot `hz` times a second."""
    return publishing(hz, data=BIG)


async def test_a_silent_well_behaved_client_gets_heartbeats_and_stays_open(processes, owner_token):
    server = processes.daphne(**ENV)
    async with connect(server.ws_url + "/ws/index", owner_token[1]) as ws:
        assert (await recv_json(ws))["heartbeat_s"] == INTERVAL
        kinds = []
        window = 3 * (INTERVAL + TIMEOUT)
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            # The spec's bound: nothing for INTERVAL + TIMEOUT means a dead link.
            kinds.append((await recv_json(ws, INTERVAL + TIMEOUT))["type"])
        # One every INTERVAL; allow two late ones on a loaded machine.
        assert kinds.count("heartbeat") >= window // INTERVAL - 2
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"


async def test_a_hundred_clients_that_stop_reading_are_closed_in_time_and_rss_stays_bounded(
    processes, owner, owner_token
):
    token, raw = owner_token
    await sync_to_async(set_caps)(owner, token, 1000)
    server = processes.daphne(**ENV)
    async with connect(server.ws_url + "/ws/market", raw) as healthy:
        await recv_json(healthy)
        baseline = rss_mb(server)
        socks = []
        try:
            for _ in range(100):
                socks.append(raw_non_reader(server.port, raw))
            stopped_at = time.monotonic()
            peak, closed_at = baseline, None
            received = 0
            async with flowing():
                while time.monotonic() - stopped_at < INTERVAL + TIMEOUT + SLACK + 2:
                    with contextlib.suppress(TimeoutError):
                        await recv_json(healthy, 0.2)
                        received += 1
                    peak = max(peak, rss_mb(server))
                    if closed_at is None and established(server, server.port) <= 1:
                        closed_at = time.monotonic() - stopped_at
                        break
        finally:
            for sock in socks:
                sock.close()
        growth = peak - baseline
        print(
            f"\nRSS baseline {baseline:.1f} MB, peak {peak:.1f} MB (+{growth:.1f} MB) with 100 non-readers; "
            f"all closed after {closed_at} s; healthy client got {received} frames"
        )
        # Closed within INTERVAL + TIMEOUT, then dropped 1 s after the close
        # frame; SLACK for a hundred sockets on a loaded two-core machine.
        assert closed_at is not None and closed_at <= INTERVAL + TIMEOUT + SLACK
        assert growth < 40
        assert received > 10  # the healthy client kept streaming all along
