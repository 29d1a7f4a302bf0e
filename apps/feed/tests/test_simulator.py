"""The simulator's day is believable and reproducible."""

import datetime as dt

import pytest

from apps.feed import market
from apps.feed.payloads import build_index, build_market
from apps.feed.simulator import VN30_BASKET, DemoClock, Simulator, SimulatorSource

VN = market.VN
DAY = dt.date(2026, 11, 26)


def at(hhmm, day=DAY):
    hours, minutes = map(int, hhmm.split(":"))
    return dt.datetime.combine(day, dt.time(hours, minutes), tzinfo=VN)


@pytest.fixture(scope="module")
def closing():
    return Simulator(seed=42).snapshot(at("15:30"))


def test_the_basket_is_the_vn30_effective_3_august_2026():
    assert len(VN30_BASKET) == 30
    assert {"BSR", "MCH", "TCX"} <= set(VN30_BASKET)
    assert not {"PLX", "TPB", "DGC"} & set(VN30_BASKET)


def test_every_price_is_on_its_tick_and_inside_the_band(closing):
    for row in closing.stocks:
        board = row["Market"]
        ceiling, floor = market.bands(row["RefPrice"], board)
        assert (row["CeilingPrice"], row["FloorPrice"]) == (ceiling, floor)
        for key in ("OpenPrice", "HighestPrice", "LowestPrice", "ClosePrice"):
            price = row[key]
            assert floor <= price <= ceiling, (row["Symbol"], key)
            assert price % market.tick_size(price, board) == 0, (row["Symbol"], key, price)
        assert row["LowestPrice"] <= row["ClosePrice"] <= row["HighestPrice"]


def test_volumes_are_in_lots_of_100_and_values_match_prices(closing):
    for row in closing.stocks:
        assert row["TotalMatchVol"] > 0 and row["TotalMatchVol"] % 100 == 0
        assert row["ForeignBuyVolTotal"] % 100 == 0 and row["ForeignSellVolTotal"] % 100 == 0
        low, high = row["LowestPrice"], row["HighestPrice"]
        assert low * row["TotalMatchVol"] <= row["TotalMatchVal"] <= high * row["TotalMatchVol"]
        assert low <= row["AveragePrice"] <= high


def test_foreigners_trade_within_the_volume_and_never_beyond_the_room(closing):
    for row in closing.stocks:
        assert row["ForeignBuyVolTotal"] <= row["TotalMatchVol"]
        assert row["ForeignSellVolTotal"] <= row["TotalMatchVol"]
        assert row["ForeignCurrentRoom"] >= 0
    full = {row["Symbol"]: row for row in closing.stocks}["FPT"]  # no room at the open
    assert full["ForeignBuyVolTotal"] <= full["ForeignSellVolTotal"]


def test_the_same_seed_replays_the_same_day_however_often_it_is_read():
    once = Simulator(seed=3).snapshot(at("13:45"))
    stepwise = Simulator(seed=3)
    for clock in ("09:20", "10:00", "11:00", "13:10", "13:45"):
        stepped = stepwise.snapshot(at(clock))
    assert stepped.stocks == once.stocks
    assert stepped.indices == once.indices
    assert stepped.futures.row == once.futures.row
    other = Simulator(seed=4).snapshot(at("13:45"))
    assert other.stocks != once.stocks


def test_nothing_trades_before_the_open_or_during_the_ato(closing):
    sim = Simulator(seed=42)
    for clock in ("08:30", "09:10"):
        data = sim.snapshot(at(clock))
        hose = [row for row in data.stocks if row["Market"] == "HOSE"]
        assert all(row["ClosePrice"] is None and row["TotalMatchVol"] == 0 for row in hose)
    assert sim.snapshot(at("08:30")).phase == "pre_open"
    assert sim.snapshot(at("09:10")).phase == "ato"


def test_the_board_opens_with_the_ato_match_and_freezes_over_lunch():
    sim = Simulator(seed=5)
    opened = sim.snapshot(at("09:15"))
    assert all(row["OpenPrice"] for row in opened.stocks if row["Market"] == "HOSE")
    before = sim.snapshot(at("11:30")).stocks
    during = sim.snapshot(at("12:40"))
    assert during.phase == "lunch"
    assert during.stocks == before


def test_the_atc_match_sets_the_close_and_then_the_market_is_closed():
    sim = Simulator(seed=5)
    in_atc = {r["Symbol"]: r["TotalMatchVol"] for r in sim.snapshot(at("14:40")).stocks}
    after = sim.snapshot(at("14:50"))
    assert after.phase == "closed"
    grew = [r for r in after.stocks if r["Market"] == "HOSE" and r["TotalMatchVol"] > in_atc[r["Symbol"]]]
    assert len(grew) == len([r for r in after.stocks if r["Market"] == "HOSE"])


def test_indices_move_with_their_constituents(closing):
    sim = Simulator(seed=42)
    data = sim.snapshot(at("15:30"))
    day = sim._day
    rows = {row["Symbol"]: row for row in data.stocks}
    for code, members in day.members.items():
        weights = day.weights[code]
        move = sum(weights[s] * (rows[s]["ClosePrice"] / rows[s]["RefPrice"] - 1) for s in members)
        index = data.indices[code]
        assert index["IndexValue"] == pytest.approx(day.prior[code] * (1 + move), abs=0.01)
        breadth = index["Advances"] + index["Declines"] + index["NoChanges"]
        assert breadth == len(members)
        assert index["TotalMatchVol"] == sum(rows[s]["TotalMatchVol"] for s in members)


def test_five_indices_with_sparkline_points(closing):
    payload = build_index(closing, closing.points)
    assert [i["code"] for i in payload["indices"]] == ["VNINDEX", "VN30", "HNXIndex", "HNX30", "HNXUpcomIndex"]
    for index in payload["indices"]:
        assert len(index["points"]) > 50
        times = [p[0] for p in index["points"]]
        assert times == sorted(times)
        assert index["points"][-1][1] == index["value"]


def test_the_future_is_the_front_month_and_its_basis_drifts_around_zero():
    bases = []
    for n in range(8):
        data = Simulator(seed=100 + n).snapshot(at("10:15"))
        futures = build_market(data)["futures"]
        assert futures["symbol"] == "41I1GC000" and futures["expiry"] == "2026-12-17"
        assert futures["floor"] <= futures["last"] <= futures["ceiling"]
        assert round(futures["last"] * 10) == futures["last"] * 10
        bases.append(futures["basis"])
    assert max(abs(b) for b in bases) < 40
    assert any(b > 0 for b in bases) and any(b < 0 for b in bases)


def test_every_frame_of_the_simulator_is_marked_simulated(closing):
    assert closing.simulated is True
    assert SimulatorSource(clock="wall", seed=1).simulated is True


def test_extra_symbols_join_the_board():
    data = Simulator(seed=1, extra=["PLX", "AAA"]).snapshot(at("10:30"))
    market_payload = build_market(data)
    symbols = [s["symbol"] for s in market_payload["stocks"]]
    assert symbols[:30] == list(VN30_BASKET) and symbols[30:] == ["PLX", "AAA"]
    assert all(s["last"] for s in market_payload["stocks"])


def test_the_demo_clock_plays_a_day_on_a_loop_and_moves_on_to_the_next_trading_day():
    clock = DemoClock(speed=60)
    midnight = at("00:00", dt.date(2026, 11, 27))  # a Friday: the wall clock's day starts the demo
    first = clock.now(midnight)
    assert first.date() == dt.date(2026, 11, 27) and first.time() == dt.time(9, 20)
    assert market.phase(first) == "continuous"  # a first look that moves
    minute = dt.timedelta(minutes=1)
    assert clock.now(midnight + minute).time() == dt.time(10, 20)  # a real minute: an hour of market time
    assert clock.now(midnight + 3 * minute).time() == dt.time(13, 48)  # past 11:31 the demo skips lunch
    assert clock.now(midnight + 7 * minute).date() == dt.date(2026, 11, 30)  # Friday's loop done: Monday
    # On a weekend the demo plays the last trading day, then the next ones.
    assert DemoClock(speed=60).now(at("00:00", dt.date(2026, 11, 29))).date() == dt.date(2026, 11, 27)


def test_every_process_computes_the_same_demo_moment_from_the_wall_clock():
    wall = [at("14:00")]
    leader = DemoClock(speed=60, wall=lambda: wall[0])
    seen = [leader.now() for _ in range(3)]
    wall[0] += dt.timedelta(minutes=37, seconds=11)
    standby = DemoClock(speed=60, wall=lambda: wall[0])  # a process started later, taking over
    assert standby.now() == leader.now() > seen[-1]
    assert SimulatorSource(clock="demo", speed=60, wall=lambda: wall[0]).now() == leader.now()


@pytest.mark.parametrize("speed", [1, 10, 60])
def test_the_demo_clock_never_goes_back_within_a_trading_date(speed):
    clock = DemoClock(speed=speed)
    moment, step = at("00:00"), dt.timedelta(seconds=47)
    last = {}
    while moment < at("00:00", DAY + dt.timedelta(days=2)):
        simulated = clock.now(moment)
        key = (moment.date(), simulated.date())  # a calendar day replays its own sequence of dates
        assert key not in last or simulated > last[key]
        last[key] = simulated
        moment += step
    # At midnight the next calendar day starts over: with a new epoch, never the one just played.
    midnight = at("00:00", DAY + dt.timedelta(days=1))
    assert clock.now(midnight - dt.timedelta(seconds=1)).date() != clock.now(midnight).date()


def test_the_wall_clock_shows_a_closed_market_when_it_is_closed():
    source = SimulatorSource(clock="wall", seed=1, now=lambda: at("10:00", dt.date(2026, 11, 29)))
    data = Simulator(seed=1).snapshot(source.now())
    assert data.phase == "closed"
    assert data.trading_date == dt.date(2026, 11, 27)


def test_futures_override_names_the_simulated_contract():
    data = Simulator(seed=1, futures_override="41I1H3000").snapshot(at("10:30"))
    futures = build_market(data)["futures"]
    assert (futures["symbol"], futures["alias"], futures["expiry"]) == ("41I1H3000", "VN30F2703", "2027-03-18")
