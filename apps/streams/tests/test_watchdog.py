"""The Redis watchdog: one slow or failed ping is not an outage, nor are any
number of them for less than REDIS_DOWN_AFTER (a failover); failing for that
long closes every socket with 1013; nothing stops the watch for good. And
every Redis error reaches callers as StateUnavailable."""

import asyncio

import pytest
import redis.exceptions

from apps.streams import watchdog as watchdog_module
from apps.streams.watchdog import Watchdog
from stocktracker.lib.state import RedisState, StateUnavailable


class FakeState:
    def __init__(self, results):
        self.results = list(results)

    async def ping(self):
        result = self.results.pop(0) if self.results else True
        if isinstance(result, BaseException):
            raise result
        return result


class FakeConsumer:
    def __init__(self):
        self.lost = 0

    async def backend_lost(self):
        self.lost += 1


@pytest.fixture
def fast(monkeypatch, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # never dialled: the state is fake
    settings.REDIS_DOWN_AFTER = 0.1
    monkeypatch.setattr(watchdog_module, "CHECK_INTERVAL", 0.01)
    monkeypatch.setattr(watchdog_module, "RETRY_INTERVAL", 0.01)

    async def layer_answers(self):  # these tests are about the ping; the probe has its own
        return None

    monkeypatch.setattr(Watchdog, "_probe", layer_answers)
    monkeypatch.setattr(Watchdog, "_start_probe_receiver", lambda self: None)

    def use(results):
        state = FakeState(results)
        monkeypatch.setattr(watchdog_module, "get_state", lambda: state)
        return state

    return use


async def _watch(results, fast, seconds=0.3):
    state = fast(results)
    dog, consumer = Watchdog(), FakeConsumer()
    dog.on_lost.append(consumer.backend_lost)
    dog.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        dog.task.cancel()
    return dog, consumer, state


async def test_a_single_failed_ping_closes_nothing(fast):
    dog, consumer, _ = await _watch([TimeoutError(), True, StateUnavailable("blip"), True], fast)
    assert consumer.lost == 0 and dog.healthy


async def test_one_failed_check_closes_nothing_however_long_it_took(fast, monkeypatch):
    class SlowThenFine:
        pings = 0

        async def ping(self):
            self.pings += 1
            if self.pings == 1:
                await asyncio.sleep(0.3)  # three times REDIS_DOWN_AFTER (0.1 s), then it fails
                raise StateUnavailable("slow")
            return True

    state = SlowThenFine()
    monkeypatch.setattr(watchdog_module, "get_state", lambda: state)
    dog, consumer = Watchdog(), FakeConsumer()
    dog.on_lost.append(consumer.backend_lost)
    dog.start()
    try:
        await asyncio.sleep(0.6)
    finally:
        dog.task.cancel()
    assert consumer.lost == 0 and dog.healthy


class Outage:
    """Every ping fails for `seconds`, then every ping answers."""

    def __init__(self, seconds):
        self.until = asyncio.get_running_loop().time() + seconds
        self.pings = self.failed = 0

    async def ping(self):
        self.pings += 1
        if asyncio.get_running_loop().time() < self.until:
            self.failed += 1
            raise StateUnavailable("down")
        return True


async def _outage(monkeypatch, seconds, watch_for):
    state = Outage(seconds)
    monkeypatch.setattr(watchdog_module, "get_state", lambda: state)
    dog, consumer = Watchdog(), FakeConsumer()
    dog.on_lost.append(consumer.backend_lost)
    refused = []
    dog.start()
    try:
        while asyncio.get_running_loop().time() < state.until:
            refused.append(not dog.healthy)
            await asyncio.sleep(0.01)
        await asyncio.sleep(watch_for)
    finally:
        dog.task.cancel()
    return dog, consumer, state, any(refused)


async def test_failed_checks_for_less_than_redis_down_after_close_nothing(fast, monkeypatch, settings):
    settings.REDIS_DOWN_AFTER = 2
    dog, consumer, state, refused = await _outage(monkeypatch, 0.5, watch_for=0.1)
    assert state.failed >= 10  # far more failed checks in a row than a blip
    assert refused  # new sockets were refused meanwhile
    assert consumer.lost == 0 and dog.healthy


async def test_failing_for_redis_down_after_closes_every_socket_with_1013(fast, monkeypatch, settings):
    settings.REDIS_DOWN_AFTER = 0.3
    dog, consumer, _, _ = await _outage(monkeypatch, 0.5, watch_for=0.1)
    assert consumer.lost >= 1
    assert dog.healthy  # the good ping after the outage lets connections in again


async def test_an_unexpected_error_counts_as_a_failed_ping_and_the_watch_goes_on(fast):
    errors = [RuntimeError("bug")] * 30  # 30 checks 0.01 s apart: longer than REDIS_DOWN_AFTER (0.1 s)
    dog, consumer, state = await _watch([*errors, True], fast, seconds=1.0)
    assert consumer.lost >= 1 and dog.healthy and not state.results
    assert not dog.task.done() or dog.task.cancelled()


async def test_a_stopped_watch_is_restarted(fast):
    fast([])
    dog = Watchdog()

    async def broken():
        raise RuntimeError("gone")

    dog._run = broken
    dog.start()
    await asyncio.sleep(0)
    assert dog.task.done()
    del dog._run
    dog.start()  # what watchdog() does on every connect
    await asyncio.sleep(0)
    assert not dog.task.done()
    dog.task.cancel()


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ConnectionError("refused"),
        redis.exceptions.TimeoutError("slow"),
        redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica."),
        redis.exceptions.ResponseError("OOM command not allowed"),
        redis.exceptions.BusyLoadingError("LOADING"),
        OSError("network unreachable"),
    ],
)
async def test_every_redis_error_is_state_unavailable(error):
    async def failing():
        raise error

    state = RedisState.__new__(RedisState)  # _call needs no connection
    with pytest.raises(StateUnavailable):
        await state._call(failing())
