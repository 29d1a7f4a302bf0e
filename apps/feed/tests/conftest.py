"""Feed test helpers: a settable market clock, the fake SSI server, subscribers."""

import datetime as dt

import pytest

from apps.feed import market
from apps.feed.ssi import SSIClient, SSISource
from stocktracker.lib.keys import subscribers as subscriber_key
from stocktracker.lib.state import get_state

from .fake_ssi import CONSUMER_ID, CONSUMER_SECRET, FakeSSI

TRADING_MORNING = dt.datetime(2026, 11, 26, 10, 0, tzinfo=market.VN)  # a Thursday, continuous trading


class Clock:
    """A market clock tests move by hand."""

    def __init__(self, start=TRADING_MORNING):
        self.moment = start

    def __call__(self):
        return self.moment

    def advance(self, **delta):
        self.moment += dt.timedelta(**delta)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def fake_ssi(clock):
    with FakeSSI(now=clock) as server:
        yield server


def ssi_client(server, **kwargs):
    options = {"max_rps": 50, "timeout": 1.0, "backoff_base": 0.01}
    options.update(kwargs)
    return SSIClient(base_url=server.url, consumer_id=CONSUMER_ID, consumer_secret=CONSUMER_SECRET, **options)


@pytest.fixture
def ssi_source(fake_ssi, clock):
    return SSISource(ssi_client(fake_ssi), now=clock, extra=[], futures_override="")


# What SSI lists rather than prices: reference data a worker may fetch with nobody watching.
REFERENCE = ("AccessToken", "Securities", "SecuritiesDetails", "IndexList", "IndexComponents")


def data_calls(server):
    """The requests a fake SSI server received for market data (prices, indices, bars)."""
    return [r for r in server.requests if r.name not in REFERENCE]


async def subscribe(stream, conn_id="viewer-1", ttl=60):
    """Hold a subscriber lease on `stream`, as a consumer or a dashboard viewer does."""
    assert await get_state().lease_acquire(conn_id, [(subscriber_key(stream), None)], ttl) == 0


async def unsubscribe(stream, conn_id="viewer-1"):
    await get_state().lease_release(conn_id, [subscriber_key(stream)])
