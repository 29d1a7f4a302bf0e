"""The three payloads, built from rows shaped exactly as SSI sends them."""

import datetime as dt
import json

from apps.feed.payloads import FeedData, Futures, build_foreign, build_index, build_market, fingerprint, foreign_speed
from apps.feed.rows import to_int

DAY = dt.date(2026, 11, 26)

# The DailyStockPrice sample of the reference, verbatim.
FPT = {"TradingDate": "26/11/2026", "PriceChange": "900", "PerPriceChange": "0.91", "CeilingPrice": "105300",
       "FloorPrice": "91700", "RefPrice": "98500", "OpenPrice": "98800", "HighestPrice": "99700",
       "LowestPrice": "98200", "ClosePrice": "99400", "AveragePrice": "99050", "ClosePriceAdjusted": "99400",
       "TotalMatchVol": "6512300", "TotalMatchVal": "645043315000", "TotalDealVal": "0", "TotalDealVol": "0",
       "ForeignBuyVolTotal": "1204500", "ForeignCurrentRoom": "3215400", "ForeignSellVolTotal": "1876200",
       "ForeignBuyValTotal": "119365950000", "ForeignSellValTotal": "185743800000", "TotalBuyTrade": "0",
       "TotalBuyTradeVol": "0", "TotalSellTrade": "0", "TotalSellTradeVol": "0", "NetBuySellVol": "-671700",
       "NetBuySellVal": "-66377850000", "TotalTradedVol": "6512300", "TotalTradedValue": "645043315000",
       "Symbol": "FPT", "Time": None}  # fmt: skip

# The DailyIndex sample of the reference, verbatim.
VN30_INDEX = {"IndexId": "VN30", "IndexValue": "2101.35", "TradingDate": "26/11/2026", "Time": None,
              "Change": "12.48", "RatioChange": "0.60", "TotalTrade": "0", "TotalMatchVol": "312450600",
              "TotalMatchVal": "10245860000000", "TypeIndex": None, "IndexName": "VN30", "Advances": "19",
              "NoChanges": "3", "Declines": "8", "Ceilings": "1", "Floors": "0", "TotalDealVol": "25430000",
              "TotalDealVal": "1284500000000", "TotalVol": "337880600", "TotalVal": "11530360000000",
              "TradingSession": "C"}  # fmt: skip


def stock(symbol, buy_value, sell_value, *, buy_volume="1000", sell_volume="1000", room="500000", **more):
    """A HOSE board row with lower-case and table-spelling keys, as some SSI answers have."""
    return {"symbol": symbol, "Market": "HOSE", "refprice": "20000", "closeprice": "20100",
            "ForeignBuyVolTotal": buy_volume, "ForeignSellVolTotal": sell_volume, "foreignbuyvaltotal": buy_value,
            "Toreignsellvaltotal": sell_value, "ForeignCurrentRoom": room, **more}  # fmt: skip


# What REST does not know (no order book, no trade-by-trade data), as null.
STREAM_ONLY = {"room_total": None, "bids": None, "asks": None, "last_volume": None, "active_buy_volume": None,
               "active_sell_volume": None, "session": None, "status": None}  # fmt: skip


def data(**kwargs):
    defaults = {"trading_date": DAY, "phase": "continuous", "source_ms": 1_764_215_400_000}
    return FeedData(**{**defaults, **kwargs})


def test_a_stock_row_becomes_a_board_entry_with_exact_whole_numbers():
    payload = build_market(data(basket=["FPT"], stocks=[{**FPT, "Market": "HOSE"}]))
    assert payload["phase"] == "continuous" and payload["trading_date"] == "2026-11-26"
    assert payload["stocks"] == [
        {"symbol": "FPT", "exchange": "HOSE", "ref": 98500, "ceiling": 105300, "floor": 91700, "open": 98800,
         "high": 99700, "low": 98200, "last": 99400, "change": 900, "change_pct": 0.91, "avg": 99050,
         "volume": 6512300, "value": 645043315000, "foreign_buy_volume": 1204500, "foreign_sell_volume": 1876200,
         "foreign_room": 3215400, **STREAM_ONLY}
    ]  # fmt: skip
    assert payload["futures"] is None
    json.dumps(payload)  # JSON-safe


def test_numbers_sent_as_strings_are_parsed_exactly():
    assert to_int("663258204999.9850") == 663258205000
    assert to_int("663258204999.4999") == 663258204999
    assert to_int("12,500") == 12500
    assert to_int("") is None and to_int(None) is None and to_int("n/a") is None
    assert to_int(22950.0) == 22950


def test_a_symbol_missing_from_the_answer_is_on_the_board_with_unknowns_as_null():
    payload = build_market(data(basket=["FPT", "VIC"], stocks=[FPT]))
    vic = payload["stocks"][1]
    assert vic["symbol"] == "VIC"
    assert all(value is None for key, value in vic.items() if key != "symbol")


def test_zero_prices_before_the_first_match_are_unknown_not_zero():
    row = {**FPT, "OpenPrice": "0", "HighestPrice": "", "LowestPrice": None, "ClosePrice": "0"}
    entry = build_market(data(basket=["FPT"], stocks=[row]))["stocks"][0]
    assert entry["open"] is entry["high"] is entry["low"] is entry["last"] is None
    assert entry["change"] is None and entry["change_pct"] is None


def test_the_futures_basis_is_the_future_minus_vn30():
    row = {"Symbol": "41I1GC000", "RefPrice": "2095.0", "CeilingPrice": "2241.6", "FloorPrice": "1948.4",
           "OpenPrice": "2098.1", "HighestPrice": "2110.0", "LowestPrice": "2090.2", "ClosePrice": "2105.3",
           "TotalMatchVol": "184230"}  # fmt: skip
    futures = Futures("41I1GC000", "VN30F2612", dt.date(2026, 12, 17), row)
    payload = build_market(data(futures=futures, indices={"VN30": VN30_INDEX}))
    assert payload["futures"] == {
        "symbol": "41I1GC000", "alias": "VN30F2612", "expiry": "2026-12-17", "ref": 2095.0, "ceiling": 2241.6,
        "floor": 1948.4, "open": 2098.1, "high": 2110.0, "low": 2090.2, "last": 2105.3, "change": 10.3,
        "change_pct": 0.49, "volume": 184230, "vn30": 2101.35, "basis": 3.95,
        **{k: v for k, v in STREAM_ONLY.items() if k != "room_total"}}  # fmt: skip


def test_the_basis_is_null_without_a_vn30_value():
    futures = Futures("41I1GC000", "VN30F2612", None, {"Symbol": "41I1GC000", "ClosePrice": "2105.3"})
    assert build_market(data(futures=futures))["futures"]["basis"] is None


def test_the_index_board_reads_daily_index_rows_and_derives_the_prior_close():
    lowercase = {key.lower(): value for key, value in VN30_INDEX.items()}
    payload = build_index(data(indices={"VN30": lowercase}), {"VN30": [[1, 2090.0], [2, 2101.35]]})
    codes = [i["code"] for i in payload["indices"]]
    assert codes == ["VNINDEX", "VN30", "HNXIndex", "HNX30", "HNXUpcomIndex"]
    vn30 = payload["indices"][1]
    assert vn30 == {
        "code": "VN30", "name": "VN30", "value": 2101.35, "prior": 2088.87, "change": 12.48, "change_pct": 0.6,
        "volume": 312450600, "value_traded": 10245860000000, "advances": 19, "declines": 8, "unchanged": 3,
        "ceilings": 1, "floors": 0, "points": [[1, 2090.0], [2, 2101.35]]}  # fmt: skip
    assert payload["indices"][0]["value"] is None and payload["indices"][0]["points"] == []


def test_index_field_aliases_from_the_spec_tables_are_accepted():
    row = {"Indexcode": "HNX30", "IndexValue": "575.20", "Change": "-1.5", "Nochanges": "4", "Ceiling": "2",
           "Floor": "1"}  # fmt: skip
    entry = build_index(data(indices={"HNX30": row}))["indices"][3]
    assert (entry["unchanged"], entry["ceilings"], entry["floors"]) == (4, 2, 1)
    assert entry["prior"] == 576.7 and entry["change_pct"] == -0.26


def test_foreign_totals_cover_vn30_and_the_whole_hose_board():
    rows = [stock("AAA", "300", "100"), stock("BBB", "50", "250"), stock("CCC", "1000", "0"),
            stock("SHS", "7000", "0", Market="HNX"), stock("ZZZ", "9000", "0", Market=None)]  # fmt: skip
    payload = build_foreign(data(basket=["AAA", "BBB"], stocks=rows))
    assert payload["vn30"] == {"buy_volume": 2000, "sell_volume": 2000, "net_volume": 0, "buy_value": 350,
                               "sell_value": 350, "net_value": 0}  # fmt: skip
    assert payload["board"]["buy_value"] == 1350 and payload["board"]["net_value"] == 1000
    assert payload["rows"][0] == {"symbol": "AAA", "buy_volume": 1000, "sell_volume": 1000, "net_volume": 0,
                                  "buy_value": 300, "sell_value": 100, "net_value": 200, "room": 500000,
                                  "room_total": None}  # fmt: skip
    assert [r["symbol"] for r in payload["rows"]] == ["AAA", "BBB"]


def test_top_buyers_and_sellers_are_the_five_largest_net_values_each_way():
    rows = [stock(f"S{n:02d}", str(n * 1000), str(6000)) for n in range(13)]  # net -6000 .. +6000
    payload = build_foreign(data(stocks=rows))
    assert [t["symbol"] for t in payload["top_buyers"]] == ["S12", "S11", "S10", "S09", "S08"]
    assert [t["symbol"] for t in payload["top_sellers"]] == ["S00", "S01", "S02", "S03", "S04"]
    assert payload["top_buyers"][0] == {"symbol": "S12", "net_volume": 0, "net_value": 6000}
    few = build_foreign(data(stocks=[stock("ONLY", "10", "0")]))
    assert few["top_buyers"] == [{"symbol": "ONLY", "net_volume": 0, "net_value": 10}] and few["top_sellers"] == []


def test_foreign_speed_is_value_per_minute_over_the_last_minute():
    history = [(0, 1_000, 500), (30_000, 2_000, 800), (60_000, 4_000, 1_100), (90_000, 7_000, 1_400)]
    speed = foreign_speed(history)
    # Baseline: the newest sample a full minute old (t=30 s): 5000 bought and 600 sold in 60 s.
    assert speed == {"window_s": 60, "buy_value_per_min": 5_000, "sell_value_per_min": 600, "net_value_per_min": 4_400}


def test_foreign_speed_scales_a_shorter_history_and_is_null_without_one():
    assert foreign_speed([(0, 0, 0), (20_000, 1_000, 3_000)])["buy_value_per_min"] == 3_000
    assert foreign_speed([(0, 0, 0)])["buy_value_per_min"] is None
    new_day = foreign_speed([(0, 9_000, 9_000), (10_000, 100, 100)])
    assert new_day["net_value_per_min"] is None


def test_the_foreign_payload_carries_the_speed_from_its_history():
    payload = build_foreign(data(stocks=[stock("AAA", "100", "0")]), [(0, 0, 0), (60_000, 100, 0)])
    assert payload["speed"]["buy_value_per_min"] == 100


def test_equal_payloads_have_equal_fingerprints_and_any_change_shows():
    one = build_market(data(basket=["FPT"], stocks=[FPT]))
    two = build_market(data(basket=["FPT"], stocks=[dict(FPT)]))
    assert fingerprint(one) == fingerprint(two)
    moved = build_market(data(basket=["FPT"], stocks=[{**FPT, "ClosePrice": "99500"}]))
    assert fingerprint(moved) != fingerprint(one)


def test_a_change_from_minus_1_to_minus_2_changes_the_fingerprint():
    # hash(-1) == hash(-2) (and hash(-1.0) == hash(-2.0)) in CPython.
    for before, after in ((-1, -2), (-1.0, -2.0)):
        one = {"futures": {"basis": before}, "stocks": [{"change": before}]}
        two = {"futures": {"basis": after}, "stocks": [{"change": before}]}
        assert fingerprint(one) != fingerprint(two)
        assert fingerprint(one) == fingerprint({"futures": {"basis": before}, "stocks": [{"change": before}]})


def test_the_rows_are_parsed_once_however_many_builders_read_them(monkeypatch):
    from apps.feed import payloads

    parsed = []
    real = payloads.stock
    monkeypatch.setattr(payloads, "stock", lambda raw: parsed.append(raw) or real(raw))
    source = data(basket=["FPT"], stocks=[FPT, stock("AAA", "100", "0")])
    build_market(source)
    build_foreign(source)
    payloads.board_flow(source)
    assert len(parsed) == 2
