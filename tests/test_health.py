"""/healthz says the process is up; /readyz whether it should get new sockets;
/status names whatever is not healthy. Through the project's ASGI application,
as daphne calls it."""

import asyncio

import httpx
import pytest

from apps.streams import drain
from apps.streams.publish import publish_feed_state
from stocktracker.lib.state import get_state

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def get():
    from stocktracker.asgi import application

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://probe") as client:
        yield client.get


async def test_healthz_answers_without_touching_anything(get):
    response = await get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"


async def test_readyz_is_200_with_no_feed_at_all(get):
    response = await get("/readyz")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["failed"] == []
    assert set(body["checks"]) == {"draining", "channel_layer", "capacity"}  # no database, no feed
    assert body["checks"]["channel_layer"] == {"ok": True, "backend": "redis"}


async def test_status_is_503_and_names_the_feed_before_any_feed_reported(get):
    response = await get("/status")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["feed"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["channel_layer"] == {"ok": True, "backend": "redis"}


async def test_status_is_200_when_the_feed_is_live_and_recent(get):
    await publish_feed_state("live")
    await get_state().feed_touch()
    response = await get("/status")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"]["feed"]["state"] == "live"


async def test_status_reports_a_stale_feed(get):
    await publish_feed_state("stale", detail="SSI timeout")
    await get_state().feed_touch()
    response = await get("/status")
    assert response.status_code == 503
    assert response.json()["failed"] == ["feed"]
    assert response.json()["checks"]["feed"]["error"] == "feed is stale"
    assert (await get("/readyz")).status_code == 200


async def test_status_reports_a_worker_that_is_alive_but_has_not_said_its_state_yet(get):
    await get_state().feed_touch()  # the leader's heartbeat comes before its first feed state
    response = await get("/status")
    assert response.status_code == 503
    feed = response.json()["checks"]["feed"]
    assert (feed["ok"], feed["state"], feed["error"]) == (False, "unknown", "feed is unknown")


async def test_status_reports_a_silent_worker(get, settings):
    settings.FEED_STALE_AFTER = 0.2
    await publish_feed_state("live")
    await get_state().feed_touch()
    await asyncio.sleep(0.4)
    response = await get("/status")
    assert response.status_code == 503
    assert response.json()["checks"]["feed"]["error"] == "feed is silent"


async def test_both_name_the_channel_layer_when_redis_is_unreachable(get, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    ready = await get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["failed"] == ["channel_layer"]
    status = await get("/status")
    assert "channel_layer" in status.json()["failed"]
    assert status.json()["checks"]["database"]["ok"] is True


async def test_draining_is_named_first(get, monkeypatch):
    monkeypatch.setattr(drain, "_draining", True)
    for path in ("/readyz", "/status"):
        response = await get(path)
        assert response.status_code == 503
        assert response.json()["status"] == "draining" and "draining" in response.json()["failed"]


async def test_status_runs_its_checks_at_most_once_a_second_whoever_asks(get, monkeypatch):
    from apps.streams import health

    runs = []
    check = health._database_ok
    monkeypatch.setattr(health, "_database_ok", lambda: runs.append(1) or check())
    answers = await asyncio.gather(*(get("/status") for _ in range(50)))
    assert {a.json()["checks"]["database"]["ok"] for a in answers} == {True}
    assert len(runs) == 1
    await asyncio.sleep(health.STATUS_EVERY + 0.1)
    await get("/status")
    assert len(runs) == 2


async def test_probes_take_get_and_head_only(get):
    from stocktracker.asgi import application

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://probe") as client:
        assert (await client.post("/readyz")).status_code == 405
        head = await client.head("/readyz")
        assert head.status_code == 200 and head.content == b""
