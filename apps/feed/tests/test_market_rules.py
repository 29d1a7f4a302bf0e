"""Trading calendar, sessions, ticks, bands and futures codes per the SSI reference, section 6."""

import datetime as dt

import pytest

from apps.feed import market

VN = market.VN


def at(hhmm, day=dt.date(2026, 11, 26)):  # a Thursday
    hours, minutes = map(int, hhmm.split(":"))
    return dt.datetime.combine(day, dt.time(hours, minutes), tzinfo=VN)


@pytest.mark.parametrize(
    ("clock", "phase"),
    [
        ("08:59", "pre_open"),
        ("09:00", "ato"),
        ("09:14", "ato"),
        ("09:15", "continuous"),
        ("11:29", "continuous"),
        ("11:30", "lunch"),
        ("13:00", "continuous"),
        ("14:30", "atc"),
        ("14:44", "atc"),
        ("14:45", "closed"),
        ("20:00", "closed"),
    ],
)
def test_hose_phases_follow_the_post_krx_timetable(clock, phase):
    assert market.phase(at(clock)) == phase


def test_hnx_has_no_ato_and_upcom_trades_until_three_without_atc():
    assert market.phase(at("09:05"), "HNX") == "continuous"
    assert market.phase(at("14:35"), "HNX") == "atc"
    assert market.phase(at("14:50"), "UPCOM") == "continuous"
    assert market.phase(at("15:00"), "UPCOM") == "closed"
    assert market.phase(at("08:50"), "DER") == "ato"


def test_a_weekend_is_closed_and_its_trading_date_is_the_friday_before():
    saturday = at("10:00", dt.date(2026, 11, 28))
    assert market.phase(saturday) == "closed"
    assert market.trading_date(saturday) == dt.date(2026, 11, 27)


def test_times_in_other_zones_are_read_in_vietnam_time():
    utc = dt.datetime(2026, 11, 26, 2, 30, tzinfo=dt.UTC)  # 09:30 in Hanoi
    assert market.phase(utc) == "continuous"


@pytest.mark.parametrize(("price", "tick"), [(9_990, 10), (10_000, 50), (49_950, 50), (50_000, 100), (140_000, 100)])
def test_hose_tick_sizes(price, tick):
    assert market.tick_size(price) == tick


def test_hnx_and_upcom_ticks_are_100():
    assert market.tick_size(5_000, "HNX") == market.tick_size(5_000, "UPCOM") == 100


@pytest.mark.parametrize(
    ("ref", "board", "ceiling", "floor"),
    [
        (22_900, "HOSE", 24_500, 21_300),  # ACB sample in the reference
        (98_500, "HOSE", 105_300, 91_700),  # FPT DailyStockPrice sample
        (21_300, "HNX", 23_400, 19_200),  # TAR sample
        (9_800, "HOSE", 10_450, 9_120),  # the ceiling crosses into the 50-VND table
    ],
)
def test_ceiling_rounds_down_and_floor_rounds_up_to_the_tick(ref, board, ceiling, floor):
    assert market.bands(ref, board) == (ceiling, floor)


def test_futures_bands_are_seven_percent_on_a_tenth_of_a_point():
    assert market.futures_bands(2101.3) == (2248.3, 1954.3)


@pytest.mark.parametrize(
    ("year", "month", "expiry"),
    [(2026, 11, dt.date(2026, 11, 19)), (2026, 12, dt.date(2026, 12, 17)), (2027, 1, dt.date(2027, 1, 21)),
     (2027, 3, dt.date(2027, 3, 18))],
)  # fmt: skip
def test_futures_expire_on_the_third_thursday(year, month, expiry):
    assert market.futures_expiry(year, month) == expiry


def test_the_front_month_rolls_the_day_after_expiry():
    assert market.front_month(dt.date(2026, 12, 17)) == (2026, 12)
    assert market.front_month(dt.date(2026, 12, 18)) == (2027, 1)
    assert market.front_month(dt.date(2026, 11, 27)) == (2026, 12)


def test_krx_futures_codes_skip_i_o_u_and_use_letters_for_late_months():
    assert market.futures_code(2026, 12) == "41I1GC000"
    assert market.futures_code(2027, 1) == "41I1H1000"
    assert market.futures_code(2025, 3) == "41I1F3000"
    assert market.parse_futures_code("41I1GC000") == (2026, 12)
    assert market.parse_futures_code("VN30F2612") == (2026, 12)
    assert market.parse_futures_code("FPT") is None


def test_futures_override_forces_the_contract():
    symbol, alias, expiry = market.futures_contract(dt.date(2026, 11, 27), "41I1H3000")
    assert (symbol, alias, expiry) == ("41I1H3000", "VN30F2703", dt.date(2027, 3, 18))
    assert market.futures_contract(dt.date(2026, 11, 27)) == ("41I1GC000", "VN30F2612", dt.date(2026, 12, 17))
