"""The builders read the hub's fields (X-QUOTE, X-TRADE, R, F) merged into a
stock row: three bid/ask levels, the last trade, active volumes, room, session."""

import datetime as dt

from apps.feed.payloads import FeedData, Futures, build_foreign, build_market

DAY = dt.date(2026, 11, 26)

# Keys as the hub spells them (reference, section 5), numbers as JSON floats.
FPT_STREAM = {"Symbol": "FPT", "MarketId": "HOSE", "Exchange": "HOSE", "RefPrice": 98500.0, "Ceiling": 105300.0,
              "Floor": 91700.0, "LastPrice": 99400.0, "LastVol": 1200.0, "TotalVol": 6512300.0,
              "BidPrice1": 99400.0, "BidVol1": 15300.0, "BidPrice2": 99300.0, "BidVol2": 40100.0,
              "BidPrice3": 99200.0, "BidVol3": 22000.0, "AskPrice1": 99500.0, "AskVol1": 8700.0,
              "AskPrice2": 99600.0, "AskVol2": 12000.0, "AskPrice3": 99700.0, "AskVol3": 30500.0,
              "ActiveBuyVol": 3200100, "ActiveSellVol": 3100000, "TotalRoom": 834721103.0, "CurrentRoom": 3215400.0,
              "BuyVol": 1180200.0, "SellVol": 1801500.0, "BuyVal": 117312000000.0, "SellVal": 178900000000.0,
              "TradingSession": "LO", "TradingStatus": "N"}  # fmt: skip


def data(**kwargs):
    return FeedData(**{"trading_date": DAY, "phase": "continuous", "source_ms": 1, "basket": ["FPT"], **kwargs})


def test_three_levels_each_side_best_first_with_the_last_trade_and_active_volumes():
    entry = build_market(data(stocks=[FPT_STREAM]))["stocks"][0]
    assert entry["bids"] == [[99400, 15300], [99300, 40100], [99200, 22000]]
    assert entry["asks"] == [[99500, 8700], [99600, 12000], [99700, 30500]]
    assert (entry["last"], entry["last_volume"], entry["volume"]) == (99400, 1200, 6512300)
    assert (entry["active_buy_volume"], entry["active_sell_volume"]) == (3200100, 3100000)
    assert (entry["room_total"], entry["foreign_room"]) == (834721103, 3215400)
    assert (entry["exchange"], entry["session"], entry["status"]) == ("HOSE", "LO", "N")


def test_an_empty_side_is_an_empty_list_and_a_missing_book_is_null():
    at_ceiling = {**FPT_STREAM, "AskPrice1": 0.0, "AskVol1": 0.0, "AskPrice2": 0.0, "AskVol2": 0.0,
                  "AskPrice3": 0.0, "AskVol3": 0.0}  # fmt: skip
    entry = build_market(data(stocks=[at_ceiling]))["stocks"][0]
    assert entry["asks"] == [] and len(entry["bids"]) == 3
    thin = {**FPT_STREAM, "BidPrice3": 0.0, "BidVol3": 0.0}
    assert build_market(data(stocks=[thin]))["stocks"][0]["bids"] == [[99400, 15300], [99300, 40100]]
    no_book = {key: v for key, v in FPT_STREAM.items() if not key.startswith(("Bid", "Ask"))}
    entry = build_market(data(stocks=[no_book]))["stocks"][0]
    assert entry["bids"] is None and entry["asks"] is None


def test_the_future_has_its_book_in_points_and_its_own_session():
    row = {"Symbol": "41I1GC000", "MarketId": "DER", "RefPrice": 2095.0, "LastPrice": 2105.3, "LastVol": 12.0,
           "BidPrice1": 2105.2, "BidVol1": 40.0, "AskPrice1": 2105.3, "AskVol1": 7.0, "AskPrice2": 2105.5,
           "AskVol2": 19.0, "ActiveBuyVol": 90000, "ActiveSellVol": 88000, "TradingSession": "ATO"}  # fmt: skip
    futures = build_market(data(futures=Futures("41I1GC000", "VN30F2612", DAY, row)))["futures"]
    assert futures["bids"] == [[2105.2, 40]] and futures["asks"] == [[2105.3, 7], [2105.5, 19]]
    assert (futures["last_volume"], futures["active_buy_volume"], futures["session"]) == (12, 90000, "ATO")


def test_foreign_rows_carry_the_total_room_and_unknown_flows_stay_null():
    unknown = {"Symbol": "VIC", "MarketId": "HOSE", "LastPrice": 140000.0}
    payload = build_foreign(data(basket=["FPT", "VIC"], stocks=[FPT_STREAM, unknown]))
    fpt, vic = payload["rows"]
    assert (fpt["room"], fpt["room_total"], fpt["net_volume"]) == (3215400, 834721103, 1180200 - 1801500)
    assert all(vic[key] is None for key in vic if key != "symbol")
    assert payload["board"]["buy_volume"] == 1180200  # VIC's unknown is not counted as 0, nor is it 0
    nothing = build_foreign(data(basket=["VIC"], stocks=[unknown]))
    assert nothing["vn30"]["buy_value"] is None and nothing["speed"]["buy_value_per_min"] is None
