"""GET /metrics: Prometheus text, only for staff and METRICS_ALLOWED_IPS, and
correct across several processes (PROMETHEUS_MULTIPROC_DIR)."""

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from prometheus_client.parser import text_string_to_metric_families

from apps.accounts.models import ApiToken, UserLimits
from apps.streams.tests.clients import connect, recv_json

pytestmark = pytest.mark.django_db(transaction=True)


def test_anonymous_clients_from_other_addresses_are_refused(client):
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403


def test_configured_addresses_and_staff_sessions_may_read_it(client, staff, settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1", "10.20.0.0/16"]
    for address in ("127.0.0.1", "10.20.3.4"):
        response = client.get("/metrics", REMOTE_ADDR=address)
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=")
        assert "# TYPE stocktracker_ws_connections gauge" in response.content.decode()
    client.force_login(staff)
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200


def test_behind_a_trusted_proxy_the_forwarded_client_counts_and_nothing_else(client, settings):
    settings.WS_TRUSTED_PROXIES = ["192.168.0.10"]
    settings.METRICS_ALLOWED_IPS = ["10.20.0.0/16"]
    via_proxy = {"REMOTE_ADDR": "192.168.0.10"}
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="10.20.0.7", **via_proxy).status_code == 200
    # The client wrote the left entry; the proxy vouches only for the rightmost.
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="10.20.0.7, 8.8.8.8", **via_proxy).status_code == 403
    # An untrusted peer cannot claim an address.
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="10.20.0.7", REMOTE_ADDR="8.8.8.8").status_code == 403


def _samples(text):
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _total(values, name, **labels):
    return sum(v for (n, ls), v in values.items() if n == name and set(labels.items()) <= set(ls))


async def _scrape(server):
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.http_url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


async def test_every_process_on_the_machine_is_counted_whichever_one_answers(processes, owner, tmp_path):
    def make_token():
        UserLimits.objects.filter(user=owner).update(max_connections=50)
        return ApiToken.issue(owner, label="metrics", max_connections=20)

    _, raw = await sync_to_async(make_token)()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "WS_MAX_CONNECTIONS_PER_IP": "50",
        "FEED_SOURCE": "simulator",
        "SIMULATOR_CLOCK": "demo",
        "SIMULATOR_SPEED": "60",
        "FEED_INTERVAL": "0.3",
        "FEED_PUBLISH_INTERVAL": "0.3",
        "FEED_IDLE_INTERVAL": "1",
    }
    processes.worker(**env)
    web_a = await sync_to_async(processes.daphne)(**env)
    web_b = await sync_to_async(processes.daphne)(**env)
    sockets = []
    for server, path, n in ((web_a, "/ws/market", 3), (web_b, "/ws/market", 2), (web_b, "/ws/index", 1)):
        for _ in range(n):
            ws = await connect(server.ws_url + path, raw)
            assert (await recv_json(ws))["type"] == "welcome"
            sockets.append(ws)
    for ws in sockets:  # the feed publishes on a subscriber's arrival and every change after
        for _ in range(3):
            assert (await recv_json(ws, timeout=15))["type"] in ("snapshot", "feed")
    await asyncio.sleep(2.5)  # the other process folds its sockets' counts every 2 s
    text = await _scrape(web_a)
    if os.environ.get("METRICS_SAMPLE_OUT"):  # docs/metrics-sample.txt is captured this way
        Path(os.environ["METRICS_SAMPLE_OUT"]).write_text(text)
    values = _samples(text)
    assert _total(values, "stocktracker_ws_connections", stream="market") == 5
    assert _total(values, "stocktracker_ws_connections", stream="index") == 1
    assert _total(values, "stocktracker_ws_connects_total") == 6
    assert _total(values, "stocktracker_messages_delivered_total", stream="market") >= 15
    assert _total(values, "stocktracker_bytes_delivered_total", stream="market") > 1000
    assert _total(values, "stocktracker_messages_published_total", stream="market") >= 3
    assert _total(values, "stocktracker_bytes_published_total", stream="index") > 0
    assert _total(values, "stocktracker_publish_to_send_seconds_count", stream="market") >= 2
    assert _total(values, "stocktracker_feed_leader") == 1
    assert sum(_total(values, "stocktracker_feed_state", state=s) for s in ("live", "closed")) == 1
    assert _total(values, "stocktracker_feed_cycle_seconds_count") >= 3
    assert text == text.replace(raw, "")
    for ws in sockets[3:]:
        await ws.close()
    await sync_to_async(processes.stop)(web_b)
    deadline = time.monotonic() + 5
    while True:
        values = _samples(await _scrape(web_a))
        if _total(values, "stocktracker_ws_connections") == 3 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    # A process that exited stops counting as open sockets; its counters stay.
    assert _total(values, "stocktracker_ws_connections") == 3
    assert _total(values, "stocktracker_ws_connects_total") == 6
    for ws in sockets[:3]:
        await ws.close()
