"""Out of trading hours (a holiday, a night) the board no longer moves: the SSI
source makes its data calls once, then none until the next session."""

import datetime as dt

from apps.feed import market
from apps.feed.ssi import SSISource

from .conftest import ssi_client

HOLIDAY_NOON = dt.datetime(2026, 4, 30, 12, 0, tzinfo=market.VN)  # Reunification Day, a Thursday
NEXT_MORNING = dt.datetime(2026, 5, 4, 10, 0, tzinfo=market.VN)  # Monday after the 30/4-1/5 closure


async def test_a_holiday_costs_one_snapshot_then_no_data_calls(fake_ssi, clock):
    clock.moment = HOLIDAY_NOON
    source = SSISource(ssi_client(fake_ssi), now=clock, extra=[], futures_override="")
    first = await source.fetch({"market", "index"})
    assert first.trading_date == dt.date(2026, 4, 29) and first.phase == "closed"
    fake_ssi.reset_log()
    for _ in range(3):
        clock.moment += dt.timedelta(minutes=5)
        assert await source.fetch({"market", "index"}) is first
    assert fake_ssi.requests == []
    # a stream the held data does not cover is fetched; the next session polls again
    await source.fetch({"market", "index", "foreign"})
    assert fake_ssi.requests
    clock.moment = NEXT_MORNING
    fake_ssi.reset_log()
    data = await source.fetch({"market"})
    assert data.trading_date == dt.date(2026, 5, 4) and fake_ssi.requests
    fake_ssi.reset_log()
    await source.fetch({"market"})
    assert fake_ssi.requests, "during a session every cycle asks again"
    await source.aclose()


async def test_on_a_holiday_preparing_for_a_first_subscriber_makes_no_data_call(fake_ssi, clock):
    clock.moment = HOLIDAY_NOON
    source = SSISource(ssi_client(fake_ssi), now=clock, extra=[], futures_override="")
    for _ in range(3):
        await source.prepare()
    assert [r.name for r in fake_ssi.requests] == ["AccessToken", "IndexComponents", "SecuritiesDetails"]
    await source.aclose()
