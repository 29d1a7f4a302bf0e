"""What the hub sends becomes the contract: SSI's recorded and documented
frames, sent by the fake hub over a real socket, read by the hub client into
the board, give topic rows in the catalogue's codes and v1 payloads that
validate against docs/asyncapi.yaml; auctions show projected values; the open
comes from the ATO match; active volumes say when they are partial; HOSE
foreign values say whether they are exact."""

import asyncio
import datetime as dt
import json

import pytest

from apps.feed import market
from apps.feed.hub import HubChannel
from apps.feed.live import Board
from apps.feed.payloads import FeedData, Futures, build_index, build_market
from apps.feed.topics import TopicBook, index_row, quote_row
from apps.feed.universe import IndexInfo, Instrument, Universe
from stocktracker.lib import catalogue
from tests.asyncapi import validator

from .conftest import ssi_client
from .fake_hub import FakeHub, broadcast_frame
from .fake_ssi import FakeSSI
from .test_hub import until

DAY = dt.date(2026, 3, 19)
FUTURE = Instrument("41I1G4000", "DER", "futures", underlying="VN30", lot=1, expiry=dt.date(2026, 4, 16))

# Recorded from SSI's hub on 19/03/2026 at 08:00 (an X frame of the April 2026
# VN30 future before its session): "DERIVATIVES", "Normal", "NaN", CloseQtty.
RECORDED_41I1G4000 = {
    "RType": "X", "TradingDate": "19/03/2026", "Time": "08:00:07", "Isin": "41I1G4000", "Symbol": "41I1G4000",
    "Ceiling": 2011.6, "Floor": 1748.4, "RefPrice": 1880.0, "Open": 0.0, "High": 0.0, "Low": 0.0, "Close": 0.0,
    "AvgPrice": "NaN", "PriorVal": 1880.0, "LastPrice": 0.0, "LastVol": 0.0, "TotalVal": 0.0, "TotalVol": 0.0,
    **{f"{side}{kind}{n}": 0.0 for side in ("Bid", "Ask") for kind in ("Price", "Vol") for n in range(1, 11)},
    "MarketId": "DERIVATIVES", "Exchange": "DERIVATIVES", "TradingSession": "C", "TradingStatus": "Normal",
    "Change": -1880.0, "RatioChange": -100.0, "EstMatchedPrice": 0.0, "Side": None, "CloseQtty": 0.0,
}  # fmt: skip

# SSI's FastConnect Data spec v2.2 (sections 3.1-3.5), as printed there.
SPEC_F = {"Rtype": "F", "MarketId": "HNX", "TradingDate": "04/05/2020", "Time": "15:00:16", "Symbol": "DPS",
          "TradingSession": "C", "TradingStatus": "NT", "Exchange": "HNX"}  # fmt: skip
SPEC_QUOTE = {
    "TradingDate": "06/04/2021", "TradingTime": "08:54:52", "Exchange": "DERIVATIVES", "Symbol": "VN30F2104",
    "StockNo": "1138", "AskPrice1": 0.0, "AskPrice2": 1252.0, "AskPrice3": 1254.0, "AskPrice4": 1257.0,
    "AskPrice5": 1257.5, "AskPrice6": 1258.6, "AskPrice7": 1259.0, "AskPrice8": 1259.4, "AskPrie9": 1259.5,
    "AskPrice10": 1259.8, "AskVol1": "140", "AskVol2": "1", "AskVol3": "1", "AskVol4": "6", "AskVol5": "20",
    "AskVol6": "10", "AskVol7": "8", "AskVol8": "2", "AskVol9": "6", "AskVol10": "2", "BidPrice1": 0.0,
    "BidPrice2": 1344.9, "BidPrice3": 1265.0, "BidPrice4": 1261.4, "BidPrice5": 1260.1, "BidPrice6": 1260.0,
    "BidPrice7": 1259.4, "BidPrice8": 1258.5, "BidPrice9": 1258.0, "BidPrice10": 1257.1, "BidVol1": "150",
    "BidVol2": "18", "BidVol3": "1", "BidVol4": "1", "BidVol5": "1", "BidVol6": "33", "BidVol7": "1", "BidVol8": "1",
    "BidVol9": "10", "BidVol10": "4", "StockType": "Future",
}  # fmt: skip
SPEC_TRADE = {
    "TradingDate": "04/05/2020", "Time": "14:46:51", "ISin": None, "Symbol": "SSI", "Ceiling": 13900, "Floor": 12100,
    "RefPrice": 13000, "Open": 12900, "Close": 12700, "High": 13000, "Low": 12700, "AvgPrice": 12816,
    "PriorVal": 13000, "LastPrice": 12700, "LastVol": 2180310, "TotalVal": 27943000000, "TotalVol": 2180310,
    "MarketId": "HOSE", "Exchange": "HOSE", "BidPrice1": 12650, "BidVol1": 37330, "BidPrice2": 12600,
    "BidVol2": 50770, "BidPrice3": 12550, "BidVol3": 2720, "AskPrice1": 12700, "AskVol1": 51670,
    "AskPrice2": 12750, "AskVol2": 18260, "AskPrice3": 12800, "AskVol3": 47210, "TradingSession": "ATC",
    "TradingStatus": "N", "Change": -300, "RatioChange": -2.31, "EstMatchedPrice": 0,
}  # fmt: skip
SPEC_R = {"RType": "R", "TradingDate": "04/05/2020", "Time": "15:02:45", "Isin": "YTC", "Symbol": "YTC",
          "TotalRoom": 0.0, "CurrentRoom": 1475400.0, "BuyVol": 0.0, "SellVol": 0.0, "BuyVal": 0.0, "SellVal": 0.0,
          "MarketId": "UPCOM", "Exchange": "UPCOM"}  # fmt: skip
SPEC_MI = {
    "IndexId": "VN30", "IndexValue": 1238.76, "PriorIndexValue": 1226.16, "TradingDate": "02/04/2021",
    "Time": "11:28:13", "TotalTrade": 0.0, "TotalQtty": 191838100.0, "TotalValue": 7289093000000.0,
    "IndexName": "VN30", "Advances": 25, "NoChanges": 2, "Declines": 3, "Ceilings": 0, "Floors": 0, "Change": 12.6,
    "RatioChange": 1.03, "TotalQttyPt": 2064000.0, "TotalValuePt": 244251000000.0, "Exchange": "HOSE",
    "AllQty": 193902100.0, "AllValue": 7533344000000.0, "IndexType": "Main", "TradingSession": None,
    "MarketId": None, "RType": "MI", "TotalQttyOd": 0.0, "TotalValueOd": 0.0,
}  # fmt: skip
SPEC_B = {"RType": "B", "Symbol": "X26", "TradingTime": "14:28:33", "Open": 16000, "High": 16000, "Low": 16000,
          "Close": 16000, "Volume": 5000, "Value": 0}  # fmt: skip


def problems(pointer, payload):
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(pointer).iter_errors(payload)]


@pytest.fixture
def fakes():
    with FakeSSI() as ssi, FakeHub(ssi, keepalive=1.0) as hub:
        yield ssi, hub


async def replayed(ssi, hub, frames):
    """A board fed through a real hub link with `frames` [(data type, content), ...],
    in one Broadcast frame as SSI sends them (each Content a JSON string)."""
    board = Board(index_codes=None)
    board.reset(DAY)
    client = ssi_client(ssi)
    link = HubChannel(hub.url, "X:ALL", client, on_message=board.apply, on_link=lambda *a: None, backoff_base=0.05)
    task = asyncio.ensure_future(link.run())
    try:
        await until(lambda: link.up, what="the link")
        hub.send_raw(broadcast_frame(frames))
        await until(lambda: board.messages >= len(frames), what="every frame")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
    return board


async def test_the_recorded_2026_derivatives_frame_gives_rows_and_payloads_that_validate(fakes):
    board = await replayed(*fakes, [("X", RECORDED_41I1G4000)])
    raw = board.rows["41I1G4000"]
    assert (raw["TradingStatus"], raw["MarketId"], raw["Exchange"]) == ("N", "DER", "DER")
    assert "AvgPrice" not in raw and "CloseQtty" not in raw and raw["TradingStatusRaw"] is None
    row = quote_row(FUTURE, raw, vn30=1870.5, phase=market.phase(dt.datetime(2026, 3, 19, 8, 0, 7, tzinfo=market.VN)))
    assert tuple(row) == catalogue.QUOTE_FIELDS
    assert (row["status"], row["status_raw"], row["session"], row["session_raw"]) == ("N", None, "C", None)
    assert (row["ref"], row["ceiling"], row["floor"]) == (1880.0, 2011.6, 1748.4)
    # Nothing traded yet: zeros and NaN are unknowns, and no change is made up from them.
    for field in ("last", "open", "high", "low", "avg", "change", "change_pct", "projected", "basis"):
        assert row[field] is None, field
    assert row["bids"] == [] and row["asks"] == []
    assert problems("/components/schemas/QuoteRow", row) == []
    contract = Futures("41I1G4000", "VN30F2604", FUTURE.expiry, raw)
    data = FeedData(trading_date=DAY, phase="pre_open", source_ms=1, futures=contract)
    payload = build_market(data)
    assert payload["futures"]["status"] == "N" and payload["futures"]["last"] is None
    assert problems("/components/schemas/MarketData", payload) == []


async def test_ssi_spec_samples_become_the_contract_s_codes_and_validate(fakes):
    frames = [
        ("F", SPEC_F),
        ("QUOTE", SPEC_QUOTE),
        ("TRADE", SPEC_TRADE),
        ("R", SPEC_R),
        ("MI", SPEC_MI),
        ("B", SPEC_B),
    ]
    board = await replayed(*fakes, frames)
    dps = board.rows["DPS"]
    assert (dps["TradingSession"], dps["TradingStatus"], dps["TradingStatusRaw"]) == ("C", None, "NT")
    assert board.rows["VN30F2104"]["Time"] == "08:54:52"  # TradingTime
    assert board.rows["VN30F2104"]["Exchange"] == "DER" and "StockNo" not in board.rows["VN30F2104"]
    assert "X26" not in board.rows  # bars are not board rows
    universe = {
        "DPS": Instrument("DPS", "HNX", "stock"),
        "SSI": Instrument("SSI", "HOSE", "stock"),
        "YTC": Instrument("YTC", "UPCOM", "stock"),
        "VN30F2104": Instrument("VN30F2104", "DER", "futures", underlying="VN30", lot=1),
    }
    rows = {s: quote_row(i, board.rows[s], phase="closed") for s, i in universe.items()}
    assert (rows["DPS"]["status"], rows["DPS"]["status_raw"]) == (None, "NT")  # unknown: null + raw, never "NT"
    ssi = rows["SSI"]
    assert (ssi["open"], ssi["high"], ssi["low"], ssi["last"], ssi["avg"]) == (12900, 13000, 12700, 12700, 12816)
    assert ssi["session"] == "ATC" and ssi["projected"] is None  # EstMatchedPrice 0: none
    future = rows["VN30F2104"]
    assert future["asks"][:2] == [[1252.0, 1], [1254.0, 1]] and len(future["bids"]) == 9  # level 1 is 0: no order
    assert rows["YTC"]["foreign_room"] == 1475400
    for symbol, row in rows.items():
        assert problems("/components/schemas/QuoteRow", row) == [], symbol
    index = index_row(IndexInfo("VN30", "VN30", "HOSE"), board.indices["VN30"], phase="continuous")
    assert (index["value"], index["advances"], index["session"]) == (1238.76, 25, None)
    assert problems("/components/schemas/IndexRow", index) == []
    data = FeedData(
        trading_date=DAY,
        phase="closed",
        source_ms=1,
        basket=["SSI"],
        extra=["DPS", "YTC"],
        stocks=list(board.rows.values()),
        futures=Futures("VN30F2104", "VN30F2104", None, board.rows["VN30F2104"]),
        indices=dict(board.indices),
    )
    market_payload = build_market(data)
    assert [s["status"] for s in market_payload["stocks"]] == ["N", None, None]
    assert problems("/components/schemas/MarketData", market_payload) == []
    assert problems("/components/schemas/IndexData", build_index(data)) == []


def test_session_and_status_spellings_seen_on_the_hub_are_the_contract_s_codes():
    board = Board(index_codes=None)
    board.reset(DAY)
    for n, (session, status) in enumerate((("CLOSE", "Normal"), ("Break", "n"), ("closed", "H"), ("PLO", "S"))):
        board.apply("F", {"Symbol": f"S{n}", "TradingSession": session, "TradingStatus": status})
    got = [(r["TradingSession"], r["TradingStatus"]) for r in board.rows.values()]
    assert got == [("C", "N"), ("BREAK", "N"), ("C", "H"), ("PLO", "S")]
    board.apply("F", {"Symbol": "S0", "TradingSession": "XYZ", "TradingStatus": 7})
    row = quote_row(Instrument("S0", "HOSE", "stock"), board.rows["S0"])
    assert (row["session"], row["session_raw"], row["status"], row["status_raw"]) == (None, "XYZ", None, "7")
    assert problems("/components/schemas/QuoteRow", row) == []
    board.apply("F", {"Symbol": "S0", "TradingSession": "LO", "TradingStatus": "N"})  # known again: raw cleared
    row = quote_row(Instrument("S0", "HOSE", "stock"), board.rows["S0"])
    assert (row["session"], row["session_raw"], row["status"], row["status_raw"]) == ("LO", None, "N", None)


UNIVERSE = Universe(
    dt.date(2026, 11, 26),
    {
        "FPT": Instrument("FPT", "HOSE", "stock"),
        "SHS": Instrument("SHS", "HNX", "stock"),
        "41I1GC000": Instrument("41I1GC000", "DER", "futures", underlying="VN30", lot=1),
    },
    {"VN30": IndexInfo("VN30", "VN30", "HOSE", members=("FPT",)), "HNX30": IndexInfo("HNX30", "HNX30", "HNX")},
)


def at(hhmm):
    hours, minutes = map(int, hhmm.split(":"))
    return dt.datetime(2026, 11, 26, hours, minutes, tzinfo=market.VN)


def published(book, board, moment):
    symbols, indices = board.take_dirty()
    return {
        name: snapshot
        for name, snapshot, _ in book.changes(board, moment, symbols=symbols, indices=indices, source_ms=1)
    }


def test_auctions_show_projected_values_cleared_after_the_match_and_the_ato_match_is_the_open():
    board, book = Board(index_codes=None), TopicBook(UNIVERSE)
    board.reset(UNIVERSE.day)
    # 08:50: the futures' ATO (stocks are not in an auction yet).
    board.apply("X-TRADE", {"Symbol": "41I1GC000", "RefPrice": 2080.0, "EstMatchedPrice": 2084.5, "TotalVol": 0.0})
    assert published(book, board, at("08:50"))["quote:41I1GC000"]["projected"] == 2084.5
    # 09:05: HOSE's ATO; the index's estimate too (MI frames carry no session).
    board.apply("X-TRADE", {"Symbol": "FPT", "RefPrice": 98500.0, "EstMatchedPrice": 99000.0, "TotalVol": 0.0})
    board.apply("MI", {"IndexId": "VN30", "IndexValue": 2080.0, "IndexValEst": 2091.3, "TradingSession": None})
    board.apply("MI", {"IndexId": "HNX30", "IndexValue": 570.0, "IndexValEst": 571.0})
    topics = published(book, board, at("09:05"))
    assert topics["quote:FPT"]["projected"] == 99000 and topics["quote:FPT"]["open"] is None
    assert topics["index:VN30"]["projected"] == 2091.3
    assert topics["index:HNX30"]["projected"] is None  # HNX has no opening auction
    assert topics["quote:41I1GC000"]["projected"] is None  # the futures matched at 09:00
    # 09:15: the ATO matches; the hub's X-TRADE has no Open: the match is the open.
    board.apply("X-TRADE", {"Symbol": "FPT", "LastPrice": 99100.0, "LastVol": 15000.0, "TotalVol": 15000.0})
    topics = published(book, board, at("09:15"))
    assert (topics["quote:FPT"]["open"], topics["quote:FPT"]["projected"]) == (99100, None)
    assert topics["index:VN30"]["projected"] is None  # cleared by the phase, though no MI came
    board.apply("X-TRADE", {"Symbol": "FPT", "LastPrice": 99300.0, "LastVol": 100.0, "TotalVol": 15100.0})
    assert published(book, board, at("09:16"))["quote:FPT"]["open"] == 99100
    # 14:30: the symbol's own session says ATC before the clock does.
    board.apply("F", {"Symbol": "SHS", "TradingSession": "ATC"})
    board.apply("X-TRADE", {"Symbol": "SHS", "EstMatchedPrice": 17200.0, "TotalVol": 500.0})
    assert published(book, board, at("14:29"))["quote:SHS"]["projected"] == 17200
    board.apply("F", {"Symbol": "SHS", "TradingSession": "PLO"})  # the ATC matched: HNX's post-close session
    topics = published(book, board, at("14:45"))
    assert topics["quote:SHS"]["projected"] is None and topics["status"]["HNX"] == "plo"


def test_an_x_frame_s_open_is_read_and_a_later_zero_does_not_erase_it():
    board = Board(index_codes=None)
    board.reset(UNIVERSE.day)
    board.apply("X", {"Symbol": "FPT", "Open": 98800.0, "High": 99000.0, "LastPrice": 98900.0, "TotalVol": 500.0})
    board.apply("X", {"Symbol": "FPT", "Open": 0.0, "LastPrice": 98950.0, "LastVol": 100.0, "TotalVol": 600.0})
    assert quote_row(UNIVERSE.get("FPT"), board.rows["FPT"])["open"] == 98800


def test_active_volumes_are_partial_after_missed_trades_until_the_next_day():
    board = Board(index_codes=None)
    board.reset(UNIVERSE.day)
    fpt = UNIVERSE.get("FPT")
    board.apply("X-TRADE", {"Symbol": "FPT", "LastVol": 100.0, "TotalVol": 100.0, "Side": "BU"})
    board.apply("X-TRADE", {"Symbol": "FPT", "LastVol": 200.0, "TotalVol": 300.0, "Side": "SD"})
    assert quote_row(fpt, board.rows["FPT"])["active_partial"] is False
    board.gap()  # a link carrying trades dropped during trading hours
    row = quote_row(fpt, board.rows["FPT"])
    assert (row["active_buy_volume"], row["active_sell_volume"], row["active_partial"]) == (100, 200, True)
    board.apply("X-TRADE", {"Symbol": "FPT", "LastVol": 100.0, "TotalVol": 400.0, "Side": "BU"})
    assert quote_row(fpt, board.rows["FPT"])["active_partial"] is True  # still: until the next day
    # A symbol first heard of mid-day, and one whose total jumps past a trade, are partial too.
    board.apply("X-TRADE", {"Symbol": "SHS", "LastVol": 100.0, "TotalVol": 5000.0, "Side": "BU"})
    assert quote_row(UNIVERSE.get("SHS"), board.rows["SHS"])["active_partial"] is True
    board.reset(UNIVERSE.day + dt.timedelta(days=1))
    board.apply("X-TRADE", {"Symbol": "FPT", "LastVol": 100.0, "TotalVol": 100.0, "Side": "BU"})
    board.apply("X-TRADE", {"Symbol": "FPT", "LastVol": 100.0, "TotalVol": 700.0, "Side": "BU"})  # 500 missed
    assert quote_row(fpt, board.rows["FPT"])["active_partial"] is True


def test_hose_foreign_values_are_exact_from_rest_and_approximate_from_the_r_channel():
    board = Board(index_codes=None)
    board.reset(UNIVERSE.day)
    fpt, shs = UNIVERSE.get("FPT"), UNIVERSE.get("SHS")
    board.apply("R", {"Symbol": "FPT", "BuyVol": 1000.0, "SellVol": 500.0, "BuyVal": 99e6, "SellVal": 49.5e6})
    row = quote_row(fpt, board.rows["FPT"])
    assert (row["foreign_buy_value"], row["foreign_values_exact"]) == (99000000, False)  # volume x last
    rest = {"Symbol": "FPT", "ForeignBuyVolTotal": "1000", "ForeignSellVolTotal": "500",
            "ForeignBuyValTotal": "98950000", "ForeignSellValTotal": "49480000"}  # fmt: skip
    board.apply_rest_stocks([rest], since=0.0, market="HOSE")  # asked before the hub's frame: the hub is newer
    row = quote_row(fpt, board.rows["FPT"])
    assert (row["foreign_buy_value"], row["foreign_sell_value"], row["foreign_values_exact"]) == (
        98950000,
        49480000,
        True,
    )
    # The same volumes again on the channel: REST's values stay; new volumes: the channel's, approximate.
    board.apply("R", {"Symbol": "FPT", "BuyVol": 1000.0, "SellVol": 500.0, "BuyVal": 99e6, "SellVal": 49.5e6})
    assert quote_row(fpt, board.rows["FPT"])["foreign_values_exact"] is True
    board.apply("R", {"Symbol": "FPT", "BuyVol": 1100.0, "SellVol": 500.0, "BuyVal": 108.9e6, "SellVal": 49.5e6})
    row = quote_row(fpt, board.rows["FPT"])
    assert (row["foreign_buy_value"], row["foreign_values_exact"]) == (108900000, False)
    # HNX and UPCOM values are exact on the channel itself.
    board.apply("R", {"Symbol": "SHS", "BuyVol": 10.0, "SellVol": 0.0, "BuyVal": 171000.0, "SellVal": 0.0})
    assert quote_row(shs, board.rows["SHS"])["foreign_values_exact"] is True


def test_order_books_are_as_deep_as_each_exchange_publishes():
    board = Board(index_codes=None)
    board.reset(UNIVERSE.day)
    levels = {f"{side}Price{n}": 1000.0 * n for side in ("Bid", "Ask") for n in range(1, 11)}
    volumes = {f"{side}Vol{n}": 10.0 * n for side in ("Bid", "Ask") for n in range(1, 11)}
    for symbol in ("FPT", "SHS", "41I1GC000"):
        board.apply("X", {"Symbol": symbol, **levels, **volumes})
    depth = {s: len(quote_row(UNIVERSE.get(s), board.rows[s])["bids"]) for s in ("FPT", "SHS", "41I1GC000")}
    assert depth == {"FPT": 3, "SHS": 10, "41I1GC000": 10}
    assert json.dumps(catalogue.BOOK_DEPTH) == '{"HOSE": 3, "HNX": 10, "UPCOM": 10, "DER": 10}'
