"""/healthz says the process is up; /readyz names what is not ready."""

import asyncio

import pytest
from django.test import AsyncClient

from apps.streams.publish import publish_feed_state
from stocktracker.lib.state import get_state

pytestmark = pytest.mark.django_db(transaction=True)


async def test_healthz_answers_without_touching_anything():
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_503_and_names_the_feed_before_any_feed_reported():
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["feed"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["channel_layer"] == {"ok": True, "backend": "redis"}


async def test_readyz_is_200_when_the_feed_is_live_and_recent():
    await publish_feed_state("live")
    await get_state().feed_touch()
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"]["feed"]["state"] == "live"


async def test_readyz_reports_a_stale_feed(settings):
    await publish_feed_state("stale", detail="SSI timeout")
    await get_state().feed_touch()
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["feed"]
    assert response.json()["checks"]["feed"]["error"] == "feed is stale"


async def test_readyz_reports_a_silent_worker(settings):
    settings.FEED_STALE_AFTER = 0.2
    await publish_feed_state("live")
    await get_state().feed_touch()
    await asyncio.sleep(0.4)
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["feed"]["error"] == "feed is silent"


async def test_readyz_names_the_channel_layer_when_redis_is_unreachable(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert "channel_layer" in body["failed"]
    assert body["checks"]["database"]["ok"] is True
