"""The simulator moves like the hub's market: every second something trades or
quotes, trades carry their volume and side, the book has three levels on the
tick ladder inside the band, and every symbol has its board's session."""

import datetime as dt
import itertools

import pytest

from apps.feed import market
from apps.feed.payloads import build_market
from apps.feed.simulator import DemoClock, Simulator, SimulatorSource

VN = market.VN
DAY = dt.date(2026, 11, 26)


def at(hhmm, day=DAY, seconds=0):
    hours, minutes = map(int, hhmm.split(":"))
    return dt.datetime.combine(day, dt.time(hours, minutes, seconds), tzinfo=VN)


@pytest.fixture(scope="module")
def morning():
    return build_market(Simulator(seed=11).snapshot(at("10:30")))


def test_on_the_wall_clock_the_board_changes_every_second_of_continuous_trading():
    sim = Simulator(seed=11)
    frames = [build_market(sim.snapshot(at("10:30", seconds=n))) for n in range(30)]
    assert all(one != two for one, two in itertools.pairwise(frames))
    changed_last = {s["symbol"] for a, b in itertools.pairwise(frames)
                    for s, t in zip(a["stocks"], b["stocks"], strict=True) if s["last"] != t["last"]}  # fmt: skip
    assert len(changed_last) >= 12  # trades spread over the basket, not one busy symbol
    futures = {f["futures"]["last"] for f in frames}
    assert len(futures) > 3


def test_the_wall_clock_source_steps_every_second_in_trading_hours():
    assert SimulatorSource(clock="wall", seed=1, now=lambda: at("10:30")).interval() == 1.0
    assert SimulatorSource(clock="wall", seed=1, now=lambda: at("08:50")).interval() == 1.0  # futures ATO
    assert SimulatorSource(clock="wall", seed=1, now=lambda: at("20:00")).interval() > 1.0


def test_every_demo_frame_a_second_apart_changes_during_trading():
    wall = [at("00:00", dt.date(2026, 11, 27))]
    source = SimulatorSource(clock="demo", speed=10, seed=3, wall=lambda: wall[0])
    frames = []
    for _ in range(20):
        frames.append(build_market(source.simulator.snapshot(source.now())))
        wall[0] += dt.timedelta(seconds=1)
    assert frames[0]["phase"] == "continuous"
    assert all(one["stocks"] != two["stocks"] for one, two in itertools.pairwise(frames))


def test_the_book_has_three_levels_a_side_on_ticks_inside_the_band_best_first(morning):
    for s in [*morning["stocks"]]:
        bids, asks = s["bids"], s["asks"]
        assert 1 <= len(bids) <= 3 and len(asks) <= 3, s["symbol"]
        prices = [p for p, _ in bids] + [p for p, _ in asks]
        assert all(s["floor"] <= p <= s["ceiling"] for p in prices)
        assert all(p % market.tick_size(p, s["exchange"]) == 0 for p in prices)
        assert [p for p, _ in bids] == sorted((p for p, _ in bids), reverse=True)
        assert [p for p, _ in asks] == sorted(p for p, _ in asks)
        assert not asks or bids[0][0] < asks[0][0]
        assert all(v > 0 and v % 100 == 0 for _, v in bids + asks)
    futures = morning["futures"]
    assert len(futures["bids"]) == len(futures["asks"]) == 3
    assert futures["bids"][0][0] < futures["asks"][0][0]
    assert all(round(p * 10) == p * 10 for p, _ in futures["bids"] + futures["asks"])


def test_trades_have_a_volume_and_a_side_and_auction_matches_count_in_neither(morning):
    for s in morning["stocks"]:
        assert s["last_volume"] > 0 and s["last_volume"] % 100 == 0
        assert s["active_buy_volume"] > 0 and s["active_sell_volume"] > 0
        # HOSE's opening auction matched without an aggressor: it is in the volume only.
        assert s["active_buy_volume"] + s["active_sell_volume"] < s["volume"] or s["exchange"] != "HOSE"
    before_open = build_market(Simulator(seed=11).snapshot(at("09:10")))
    assert all(s["active_buy_volume"] == s["active_sell_volume"] == 0 for s in before_open["stocks"])


def test_foreign_room_has_a_total_and_what_remains_of_it(morning):
    assert all(0 <= s["foreign_room"] <= s["room_total"] for s in morning["stocks"])


@pytest.mark.parametrize(
    ("clock", "stock", "future"),
    [("08:50", None, "ATO"), ("09:05", "ATO", "LO"), ("10:30", "LO", "LO"), ("12:00", "BREAK", "BREAK"),
     ("14:35", "ATC", "ATC"), ("14:50", "C", "C")],
)  # fmt: skip
def test_each_symbol_carries_its_own_boards_session(clock, stock, future):
    payload = build_market(Simulator(seed=2, extra=["SHS"]).snapshot(at(clock)))
    hose = {s["session"] for s in payload["stocks"] if s["exchange"] == "HOSE"}
    assert hose == {stock} and payload["futures"]["session"] == future
    assert {s["status"] for s in payload["stocks"]} == {"N"}
    if clock == "09:05":
        assert payload["stocks"][-1]["session"] == "LO"  # HNX has no opening auction


def test_a_holiday_on_the_wall_clock_shows_the_last_trading_day_closed():
    data = Simulator(seed=1).snapshot(at("10:00", dt.date(2026, 2, 18)))  # Tết
    assert data.phase == "closed" and data.trading_date == dt.date(2026, 2, 13)
    assert {s["session"] for s in build_market(data)["stocks"]} == {"C"}


def test_the_demo_clock_skips_holidays():
    clock = DemoClock(speed=600)
    start = at("00:00", dt.date(2026, 2, 12))
    days = {clock.now(start + dt.timedelta(seconds=n)).date() for n in range(0, 120, 5)}  # a loop: 29 s
    assert dt.date(2026, 2, 13) in days and dt.date(2026, 2, 23) in days
    assert not days & {dt.date(2026, 2, d) for d in range(16, 21)}
