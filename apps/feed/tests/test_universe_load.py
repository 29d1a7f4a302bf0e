"""The day's universe from SSI REST (the fake SSI server's synthetic whole
market, paged as SSI pages): every listed instrument with its type, lot,
price steps and terms, every index with its members, and the last good one
kept through failures."""

import datetime as dt

import pytest

from apps.feed import universe as universes
from apps.feed.simulator import VN30_BASKET
from apps.feed.ssi import SSIError
from stocktracker.lib import catalogue

from .conftest import ssi_client
from .fake_market import CW_COUNT, SECTORS

DAY = dt.date(2026, 11, 26)
EXPECTED = {
    ("HOSE", "stock"): 400, ("HOSE", "etf"): 15, ("HOSE", "fund"): 4, ("HOSE", "cw"): CW_COUNT,
    ("HNX", "stock"): 300, ("UPCOM", "stock"): 850, ("DER", "futures"): 8, ("DER", "bond_futures"): 6,
}  # fmt: skip


@pytest.fixture
async def client(fake_ssi):
    client = ssi_client(fake_ssi)
    yield client
    await client.aclose()


async def test_every_listed_instrument_and_index_is_loaded_with_what_a_board_needs(fake_ssi, client):
    universe = await universes.load_universe(client, DAY)
    assert universe.counts() == EXPECTED and len(universe.instruments) == 1823
    fpt = universe.get("FPT")
    assert (fpt.exchange, fpt.type, fpt.lot, fpt.name) == ("HOSE", "stock", 100, "CTCP FPT")
    assert fpt.ticks == ((1, 10), (10000, 50), (50000, 100))
    assert universe.get("SHS").ticks == ((1, 100),)
    cw = universe.get("CFPT2601")
    assert (cw.type, cw.exchange, cw.underlying) == ("cw", "HOSE", "FPT")
    assert cw.exercise_price > 0 and cw.exercise_ratio in (1, 2, 4, 5, 8, 10) and cw.maturity > DAY
    vn30_futures = universe.futures("VN30")
    assert [f.symbol for f in vn30_futures] == ["41I1GC000", "41I1H1000", "41I1H3000", "41I1H6000"]
    assert vn30_futures[0].expiry == dt.date(2026, 12, 17) and vn30_futures[0].lot == 1
    assert [f.symbol for f in universe.futures("VN100")] == ["41I2GC000", "41I2H1000", "41I2H3000", "41I2H6000"]
    bonds = [i for i in universe.instruments.values() if i.type == "bond_futures"]
    assert {b.underlying for b in bonds} == {"GB05", "GB10"} and all(b.expiry for b in bonds)
    # Indices, sector ones included, with their members.
    assert len(universe.indices) == 24
    assert universe.indices["VN30"].members == VN30_BASKET and universe.indices["VN30"].kind == "main"
    assert len(universe.indices["VNINDEX"].members) == 400
    assert {code for code, i in universe.indices.items() if i.kind == "sector"} == set(SECTORS)
    assert universe.indices["HNXUpcomIndex"].exchange == "UPCOM" and universe.indices["HNX30"].exchange == "HNX"
    groups = universe.groups()
    assert set(groups) == set(catalogue.BOARD_GROUPS)
    assert len(groups["VN30"]) == 30 and len(groups["VN100"]) == 100 and len(groups["HNX30"]) == 30
    assert len(groups["HOSE"]) == 404 and len(groups["CW"]) == CW_COUNT and len(groups["FU"]) == 14
    assert universes.check(universe) == []
    # About 8 + one per index requests, and no data call.
    names = [r.name for r in fake_ssi.requests if r.name != "AccessToken"]
    assert sorted(set(names)) == ["IndexComponents", "IndexList", "Securities", "SecuritiesDetails"]
    assert len(names) == 4 + 4 + 2 + 24


async def test_small_pages_are_followed_to_the_same_universe(fake_ssi, client):
    whole = await universes.load_universe(client, DAY)
    fake_ssi.reset_log()
    paged = await universes.load_universe(client, DAY, page_size=100)
    assert paged.instruments == whole.instruments and paged.indices == whole.indices
    details = [r.params["pageindex"] for r in fake_ssi.calls("SecuritiesDetails") if r.params["market"] == "UPCOM"]
    assert details == [str(n) for n in range(1, 10)]  # 850 items: nine pages of a hundred
    vnindex = [r.params["pageindex"] for r in fake_ssi.calls("IndexComponents") if r.params["indexcode"] == "VNINDEX"]
    assert vnindex == ["1", "2", "3", "4"]  # 400 members, as totalRecord says: four pages


async def test_the_last_good_universe_is_kept_through_rest_failures(fake_ssi, client):
    good = await universes.load_universe(client, DAY)
    await universes.keep(good)
    fake_ssi.reference_down = True
    with pytest.raises(SSIError):
        await universes.load_universe(client, DAY + dt.timedelta(days=1))
    kept = await universes.last_good()
    assert kept.day == DAY and kept.instruments == good.instruments and kept.indices == good.indices


async def test_a_universe_that_shrank_by_half_is_refused(fake_ssi, client):
    good = await universes.load_universe(client, DAY)
    bigger = dict(good.instruments)
    bigger.update({f"X{n:04d}": good.get("FPT") for n in range(2000)})
    with pytest.raises(universes.UniverseError, match="1823 instruments, the last good universe had 3823"):
        await universes.load_universe(client, DAY, previous=universes.Universe(DAY, bigger, good.indices))
    assert await universes.load_universe(client, DAY, previous=good)
