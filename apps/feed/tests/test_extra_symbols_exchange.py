"""Symbols added with EXTRA_SYMBOLS carry their real exchange from SSI REST,
and only HOSE rows count into the HOSE board's foreign totals."""

from apps.feed.payloads import board_flow, build_foreign, build_market
from apps.feed.rows import to_int
from apps.feed.ssi import SSISource

from .conftest import ssi_client


async def test_extras_off_hose_carry_their_exchange_and_stay_out_of_the_hose_totals(fake_ssi, clock):
    source = SSISource(ssi_client(fake_ssi), now=clock, extra=["DGC", "SHS", "ACV"], futures_override="")
    data = await source.fetch({"market", "foreign"})
    extras = {s["symbol"]: s for s in build_market(data)["stocks"][30:]}
    assert {symbol: s["exchange"] for symbol, s in extras.items()} == {"DGC": "HOSE", "SHS": "HNX", "ACV": "UPCOM"}
    assert all(s["last"] for s in extras.values())

    hose_only = await source.client.daily_stock_price(clock().date(), market_code="HOSE")
    expected = sum(to_int(row["ForeignBuyValTotal"]) for row in hose_only)
    assert board_flow(data)["buy_value"] == build_foreign(data)["board"]["buy_value"] == expected

    # Next cycle: each extra's exchange is known, one request for each off HOSE.
    fake_ssi.reset_log()
    clock.advance(seconds=10)
    data = await source.fetch({"market"})
    asked = [(c.params.get("market"), c.params.get("symbol")) for c in fake_ssi.calls("DailyStockPrice")]
    assert ("HNX", "SHS") in asked and ("UPCOM", "ACV") in asked and ("HNX", "ACV") not in asked
    assert [s["exchange"] for s in build_market(data)["stocks"][30:]] == ["HOSE", "HNX", "UPCOM"]


async def test_what_rest_does_not_know_stays_null_never_zero(fake_ssi, clock):
    source = SSISource(ssi_client(fake_ssi), now=clock, extra=[], futures_override="")
    payload = build_market(await source.fetch({"market"}))
    for entry in [*payload["stocks"], payload["futures"]]:
        for field in ("bids", "asks", "last_volume", "active_buy_volume", "active_sell_volume", "session", "status"):
            assert entry[field] is None, (entry["symbol"], field)
    assert all(s["room_total"] is None for s in payload["stocks"])
