"""The trading calendar follows the exchanges: their holidays and notices, MARKET_CLOSED_DATES
and MARKET_OPEN_DATES.

The expected days are the exchanges' own announcements: HOSE's 2026 calendar
(12 closed days, announced 9 Dec 2025; HNX's Tết notice cites VNX letter
1403/SGDVN-THHC of 28 Nov 2025) and the 2025 closures (Tết 27-31/1, Hùng Kings
7/4, 30/4-2/5 with 2/5 swapped for Saturday 26/4, National Day 1-2/9).
"""

import datetime as dt

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.feed import market

VN = market.VN
D = dt.date

HOSE_2026 = [D(2026, 1, 1), *[D(2026, 2, d) for d in range(16, 21)], D(2026, 4, 27), D(2026, 4, 30), D(2026, 5, 1),
             D(2026, 8, 31), D(2026, 9, 1), D(2026, 9, 2)]  # fmt: skip
CLOSED_2025 = [D(2025, 1, 1), *[D(2025, 1, d) for d in range(27, 32)], D(2025, 4, 7), D(2025, 4, 30), D(2025, 5, 1),
               D(2025, 5, 2), D(2025, 9, 1), D(2025, 9, 2)]  # fmt: skip
CLOSED_2027 = [D(2027, 1, 1), D(2027, 2, 4), D(2027, 2, 5), D(2027, 2, 8), D(2027, 2, 9), D(2027, 2, 10),
               D(2027, 4, 16), D(2027, 4, 30), D(2027, 5, 3), D(2027, 9, 2), D(2027, 9, 3)]  # fmt: skip


def at(day, hhmm="10:00"):
    hours, minutes = map(int, hhmm.split(":"))
    return dt.datetime.combine(day, dt.time(hours, minutes), tzinfo=VN)


@pytest.mark.parametrize("day", HOSE_2026 + CLOSED_2025 + CLOSED_2027)
def test_an_exchange_holiday_is_closed_all_day(day):
    assert not market.is_trading_day(day)
    assert market.phase(at(day)) == "closed"
    assert market.phase(at(day, "08:50"), "DER") == "closed"
    assert not market.is_active(at(day)) and not market.is_open(at(day))


def test_hose_2026_closes_exactly_the_twelve_weekdays_it_announced():
    weekdays = [D(2026, 1, 1) + dt.timedelta(days=n) for n in range(365)]
    closed = [day for day in weekdays if day.weekday() < 5 and not market.is_trading_day(day)]
    assert closed == HOSE_2026


def test_vietnam_cultural_day_2026_is_a_trading_day_as_the_exchanges_announced():
    # The `holidays` package closes 24/11/2026 (Politburo Resolution 80); HOSE's
    # and HNX's 2026 calendars do not: the exchanges' notice wins.
    import holidays

    cultural_day = D(2026, 11, 24)
    assert cultural_day in holidays.country_holidays("VN", years=2026)
    assert market.is_trading_day(cultural_day)
    assert market.phase(at(cultural_day)) == "continuous" and market.is_active(at(cultural_day))
    assert market.trading_date(at(cultural_day)) == cultural_day
    assert market.next_trading_day(D(2026, 11, 23)) == cultural_day


def test_market_open_dates_force_a_holiday_or_a_weekend_open(settings):
    holiday, saturday = D(2026, 9, 2), D(2026, 12, 5)
    assert not market.is_trading_day(holiday) and not market.is_trading_day(saturday)
    settings.MARKET_OPEN_DATES = frozenset({holiday, saturday})
    assert market.is_trading_day(holiday) and market.phase(at(holiday)) == "continuous"
    assert market.is_trading_day(saturday) and market.trading_date(at(saturday)) == saturday
    assert market.previous_trading_day(D(2026, 9, 3)) == holiday
    # A setting also beats an exchange notice, either way.
    settings.MARKET_OPEN_DATES = frozenset()
    settings.MARKET_CLOSED_DATES = frozenset({D(2026, 11, 24)})
    assert not market.is_trading_day(D(2026, 11, 24))


def test_hnx_post_close_session_is_its_own_phase():
    day = D(2026, 11, 26)
    assert "plo" in market.PHASES and "plo" in market.OPEN_PHASES
    assert market.phase(at(day, "14:44"), "HNX") == "atc"
    assert market.phase(at(day, "14:45"), "HNX") == "plo"
    assert market.phase(at(day, "14:59"), "HNX") == "plo"
    assert market.phase(at(day, "15:00"), "HNX") == "closed"
    # HOSE has no PLO (put-through only after its ATC); UPCOM trades on to 15:00.
    assert market.phase(at(day, "14:50"), "HOSE") == "closed"
    assert market.phase(at(day, "14:50"), "UPCOM") == "continuous"
    assert market.phase(at(day, "14:50"), "DER") == "closed"
    assert market.session_code("plo") == "PLO"


def test_the_trading_date_of_a_holiday_is_the_last_trading_day_before_it():
    assert market.trading_date(at(D(2026, 2, 18))) == D(2026, 2, 13)
    assert market.trading_date(at(D(2026, 9, 1))) == D(2026, 8, 28)
    assert market.next_trading_day(D(2026, 2, 13)) == D(2026, 2, 23)


def test_a_futures_contract_expiring_on_a_holiday_expires_the_trading_day_before():
    assert market.futures_expiry(2026, 2) == D(2026, 2, 13)  # the third Thursday, 19/02, fell in Tết
    assert market.front_month(D(2026, 2, 13)) == (2026, 2)
    assert market.front_month(D(2026, 2, 23)) == (2026, 3)
    assert market.futures_expiry(2026, 12) == D(2026, 12, 17)


def test_derivatives_open_at_a_quarter_to_nine_before_the_stock_boards():
    day = D(2026, 11, 26)
    assert market.phase(at(day, "08:44"), "DER") == "pre_open"
    assert market.phase(at(day, "08:45"), "DER") == "ato"
    assert market.phase(at(day, "08:50")) == "pre_open"
    assert market.is_open(at(day, "08:50")) and not market.is_open(at(day, "08:44"))
    assert market.phase(at(day, "09:00"), "DER") == "continuous"


def test_market_closed_dates_close_a_day_announced_late(settings):
    day = D(2026, 12, 3)
    assert market.is_trading_day(day)
    settings.MARKET_CLOSED_DATES = frozenset({day})
    assert market.phase(at(day)) == "closed"
    assert market.trading_date(at(day)) == D(2026, 12, 2)
    assert market.futures_expiry(2026, 12) == D(2026, 12, 17)
    settings.MARKET_CLOSED_DATES = frozenset({D(2026, 12, 17)})
    assert market.futures_expiry(2026, 12) == D(2026, 12, 16)


@pytest.mark.parametrize("name", ["MARKET_CLOSED_DATES", "MARKET_OPEN_DATES"])
def test_a_malformed_market_date_stops_start_up_naming_the_variable(monkeypatch, name):
    from stocktracker import settings as project_settings

    monkeypatch.setenv(name, "2026-12-03,3/12/2026")
    with pytest.raises(ImproperlyConfigured, match=f"{name}='3/12/2026'"):
        project_settings._dates(name)
