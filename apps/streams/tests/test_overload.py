"""Overload degrades, never cascades: past its capacity a process refuses new
sockets at once with 1013 (one log line per interval, not one per socket) and
keeps streaming to the ones it has; a busy process is not taken for a Redis outage."""

import asyncio
import os

import pytest
from asgiref.sync import sync_to_async

from apps.accounts.models import ApiToken
from apps.streams import watchdog as watchdog_module
from apps.streams.watchdog import Watchdog

from .clients import close_code, connect, recv_json
from .conftest import publish

pytestmark = pytest.mark.django_db(transaction=True)


async def test_past_capacity_new_sockets_get_1013_at_once_and_open_ones_keep_streaming(processes, owner_token):
    await sync_to_async(ApiToken.objects.filter(pk=owner_token[0].pk).update)(max_connections=50)
    server = processes.daphne(WS_MAX_SOCKETS_PER_PROCESS=3, WS_MAX_CONNECTIONS_PER_IP=50)
    url = server.ws_url + "/ws/market"
    open_ = [await connect(url, owner_token[1]).__aenter__() for _ in range(3)]
    try:
        for ws in open_:
            assert (await recv_json(ws))["type"] == "welcome"
        for _ in range(5):
            started = asyncio.get_running_loop().time()
            async with connect(url, owner_token[1]) as extra:
                code, frames = await close_code(extra, timeout=3)
            assert code == 1013 and frames[-1]["code"] == "overloaded"
            assert asyncio.get_running_loop().time() - started < 1.5
        await publish(data={"still": "streaming"})
        for ws in open_:
            while (frame := await recv_json(ws, 3))["type"] != "snapshot" or frame["data"] != {"still": "streaming"}:
                pass
    finally:
        for ws in open_:
            await ws.close()
    log = server.log_path.read_text()
    assert log.count("refusing new sockets with 1013") == 1, log  # five refusals, one line
    assert "overloaded: " in log


class SlowLoopState:
    """The event loop's view of Redis when the loop itself is saturated: every
    ping times out, although Redis answers."""

    async def ping(self):
        raise TimeoutError


class FakeConsumer:
    def __init__(self):
        self.lost = 0

    async def backend_lost(self):
        self.lost += 1


async def _checks_for(dog, seconds):
    """Checks back to back for `seconds`, as the watchdog's loop makes them during an outage."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await dog.check()
        await asyncio.sleep(0.01)
    await dog.check()


async def test_a_busy_process_is_not_taken_for_a_redis_outage(monkeypatch, settings):
    settings.REDIS_URL = os.environ["REDIS_URL"]  # the real one: it answers the watchdog's own thread
    settings.REDIS_DOWN_AFTER = 0.3
    monkeypatch.setattr(watchdog_module, "get_state", SlowLoopState)
    dog, consumer = Watchdog(), FakeConsumer()
    dog.on_lost.append(consumer.backend_lost)
    await _checks_for(dog, 0.6)
    assert consumer.lost == 0 and dog.healthy and dog.failures == 0


async def test_redis_really_down_still_trips(monkeypatch, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens: the thread's ping fails too
    settings.REDIS_DOWN_AFTER = 0.3
    monkeypatch.setattr(watchdog_module, "get_state", SlowLoopState)
    dog, consumer = Watchdog(), FakeConsumer()
    dog.on_lost.append(consumer.backend_lost)
    await _checks_for(dog, 0.6)
    await asyncio.sleep(0)
    assert consumer.lost >= 1 and not dog.healthy


async def test_a_saturated_event_loop_is_not_taken_for_a_stuck_channel_layer(settings):
    """Every turn of the loop takes 1.5 s (a process busy with other work):
    the probe through the real channel layer comes back seconds late by the
    clock (it takes a few turns of the loop), and is not counted as a failure."""
    import time

    settings.REDIS_URL = os.environ["REDIS_URL"]
    dog, consumer = Watchdog(), FakeConsumer()
    dog.on_lost.append(consumer.backend_lost)
    dog._start_probe_receiver()
    await asyncio.wait_for(dog.probe_ready.wait(), 5)
    assert await dog._probe() is None  # a quiet loop: back at once

    busy = True

    async def hog():
        while busy:
            time.sleep(1.5)  # the point: the loop is blocked
            await asyncio.sleep(0)

    hogging = asyncio.ensure_future(hog())
    failures = []
    try:
        await dog.check()
        failures.append(dog.failures)
    finally:
        busy = False
        await hogging
        dog.probe_task.cancel()
    assert failures == [0] and consumer.lost == 0 and dog.healthy
