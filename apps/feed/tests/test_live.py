"""The in-memory board: hub messages and REST rows in one spelling, the newer one wins."""

import datetime as dt
import time

from apps.feed import market, payloads
from apps.feed.live import Board
from apps.feed.payloads import FeedData, Futures

DAY = dt.date(2026, 11, 26)
REST_FPT = {
    "Symbol": "FPT", "RefPrice": "98500", "CeilingPrice": "105300", "FloorPrice": "91700", "OpenPrice": "98800",
    "HighestPrice": "99700", "LowestPrice": "98200", "ClosePrice": "99400", "AveragePrice": "99050",
    "TotalMatchVol": "6512300", "TotalMatchVal": "645043315000", "ForeignBuyVolTotal": "1204500",
    "ForeignSellVolTotal": "1876200", "ForeignCurrentRoom": "3215400", "NetBuySellVol": "-671700",
}  # fmt: skip


def board():
    b = Board(market.INDEX_CODES)
    b.reset(DAY)
    return b


def quote(b, symbol="FPT"):
    data = FeedData(trading_date=DAY, phase="continuous", source_ms=0, basket=[symbol], stocks=list(b.rows.values()))
    return data.quotes[symbol]


def test_a_rest_row_is_kept_in_the_hub_spelling_so_the_hub_updates_the_same_fields():
    b = board()
    b.apply_rest_stocks([REST_FPT], time.monotonic(), market="HOSE")
    row = b.rows["FPT"]
    assert "ClosePrice" not in row and row["LastPrice"] == "99400" and row["Ceiling"] == "105300"
    assert "NetBuySellVol" not in row  # derived, would go stale next to the hub's numbers
    b.apply("X-TRADE", {"Symbol": "FPT", "LastPrice": 99500.0, "LastVol": 100.0, "TotalVol": 6512400.0, "Side": "BU"})
    b.apply("R", {"Symbol": "FPT", "TotalRoom": 834721103.0, "CurrentRoom": 3215300.0, "FBuyVol": 1204600.0})
    q = quote(b)
    assert (q["last"], q["volume"], q["open"], q["ref"]) == (99500, 6512400, 98800, 98500)
    assert (q["foreign_room"], q["foreign_buy_volume"]) == (3215300, 1204600)
    assert b.rows["FPT"]["TotalRoom"] == 834721103.0 and b.rows["FPT"]["ActiveBuyVol"] == 100


def test_rest_does_not_overwrite_what_the_hub_sent_after_its_last_drop():
    b = board()
    drop = time.monotonic()
    b.apply("X-TRADE", {"Symbol": "FPT", "LastPrice": 99900.0, "TotalVol": 7000000.0})
    b.apply_rest_stocks([REST_FPT], drop, market="HOSE")
    assert b.rows["FPT"]["LastPrice"] == 99900.0 and b.rows["FPT"]["TotalVol"] == 7000000.0
    assert b.rows["FPT"]["CurrentRoom"] == "3215400"  # the hub sent no room: REST fills it
    b.apply_rest_stocks([REST_FPT], time.monotonic(), market="HOSE")  # after a later drop: REST wins
    assert b.rows["FPT"]["LastPrice"] == "99400"


def test_active_volumes_count_each_trade_once_by_side():
    b = board()
    for total, volume, side in ((100, 100, "BU"), (300, 200, "SD"), (300, 200, "SD"), (350, 50, ""), (450, 100, "bu")):
        b.apply("X-TRADE", {"Symbol": "ACB", "LastVol": volume, "TotalVol": total, "Side": side})
    assert (b.rows["ACB"]["ActiveBuyVol"], b.rows["ACB"]["ActiveSellVol"]) == (200, 200)
    b.reset(DAY + dt.timedelta(days=1))
    b.apply("X-TRADE", {"Symbol": "ACB", "LastVol": 10, "TotalVol": 10, "Side": "SD"})
    assert (b.rows["ACB"]["ActiveBuyVol"], b.rows["ACB"]["ActiveSellVol"]) == (0, 10)


def test_quotes_index_aliases_and_messages_not_for_the_board():
    b = board()
    # Ten levels a side are kept (HNX, UPCoM and derivatives publish ten); nothing beyond.
    quote = {"Symbol": "FPT", "BidPrice1": 99300.0, "BidVol1": 500.0, "AskPrice1": 99400.0, "BidPrice10": 1}
    b.apply("X-QUOTE", {**quote, "BidPrice11": 2})
    assert b.rows["FPT"]["BidPrice1"] == 99300.0 and b.rows["FPT"]["BidPrice10"] == 1
    assert "BidPrice11" not in b.rows["FPT"]
    b.apply("MI", {"IndexID": "vn30", "IndexValue": 2101.35, "Nochanges": 3, "PriorIndexValue": 2088.87})
    entry = payloads.index_entry("VN30", b.indices["VN30"])
    assert (entry["value"], entry["unchanged"], entry["change"]) == (2101.35, 3, 12.48)
    assert b.apply("MI", {"IndexId": "VNXALL", "IndexValue": 1.0}) is False
    assert b.apply("B", {"Symbol": "FPT"}) is False and b.apply("X-TRADE", {"LastPrice": 1.0}) is False
    b.apply("F", {"Symbol": "FPT", "TradingSession": "ATC", "TradingStatus": "N"})
    assert b.rows["FPT"]["TradingSession"] == "ATC"


def test_the_future_row_reads_as_the_builders_expect():
    b = board()
    b.apply("X-TRADE", {"Symbol": "41I1GC000", "LastPrice": 2105.3, "RefPrice": 2100.0, "TotalVol": 1500.0})
    contract = Futures("41I1GC000", "VN30F2612", dt.date(2026, 12, 17), b.rows["41I1GC000"])
    entry = payloads.futures_entry(contract, 2101.35)
    assert (entry["last"], entry["change"], entry["volume"], entry["basis"]) == (2105.3, 5.3, 1500, 3.95)
