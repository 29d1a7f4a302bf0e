"""docs/asyncapi.yaml describes exactly the frames and payloads the feed publishes."""

import datetime as dt
import json

import pytest
import yaml

from apps.feed import market
from apps.feed.payloads import build_foreign, build_index, build_market
from apps.feed.simulator import Simulator
from apps.streams import protocol
from conftest import ROOT

DOC = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
SCHEMAS = DOC["components"]["schemas"]


@pytest.fixture(scope="module")
def data():
    return Simulator(seed=9).snapshot(dt.datetime(2026, 11, 26, 13, 30, tzinfo=market.VN))


def keys(name):
    schema = SCHEMAS[name]
    assert set(schema["required"]) == set(schema["properties"]), f"{name}: every field is required"
    return set(schema["required"])


def test_the_document_is_asyncapi_3_with_the_three_channels():
    assert DOC["asyncapi"].startswith("3.")
    assert {c["address"] for c in DOC["channels"].values()} == {"/ws/market", "/ws/foreign", "/ws/index"}


def test_every_close_code_of_the_protocol_is_documented():
    documented = {int(code) for code in DOC["info"]["x-close-codes"]}
    assert documented == {int(code) for code in protocol.Close}


def test_the_market_payload_has_exactly_the_documented_fields(data):
    payload = build_market(data)
    assert set(payload) == keys("MarketData")
    assert all(set(stock) == keys("Stock") for stock in payload["stocks"])
    assert set(payload["futures"]) == keys("Futures")
    assert payload["phase"] in SCHEMAS["Phase"]["enum"]


def test_the_foreign_payload_has_exactly_the_documented_fields(data):
    payload = build_foreign(data, [(0, 0, 0), (60_000, 10, 5)])
    assert set(payload) == keys("ForeignData")
    assert set(payload["vn30"]) == set(payload["board"]) == keys("FlowTotals")
    assert all(set(row) == keys("TopEntry") for row in payload["top_buyers"] + payload["top_sellers"])
    assert all(set(row) == keys("ForeignRow") for row in payload["rows"])
    assert set(payload["speed"]) == set(SCHEMAS["ForeignSpeed"]["required"])


def test_the_index_payload_has_exactly_the_documented_fields(data):
    payload = build_index(data, data.points)
    assert set(payload) == keys("IndexData")
    assert all(set(entry) == keys("IndexEntry") for entry in payload["indices"])
    assert [e["code"] for e in payload["indices"]] == SCHEMAS["IndexEntry"]["properties"]["code"]["enum"]


def test_snapshot_and_feed_frames_have_the_documented_envelopes():
    frame = json.loads(
        protocol.snapshot_frame(
            "market", epoch="2026-11-26", seq=1, published_ms=1, source_ms=1, feed="live", data={}, simulated=True
        )
    )
    assert set(frame) == keys("SnapshotEnvelope")
    feed = json.loads(protocol.feed_frame("stale", since_ms=1, detail="x"))
    assert set(feed) == keys("Feed") and feed["state"] in SCHEMAS["FeedState"]["enum"]


def test_the_topic_rows_have_exactly_the_documented_fields():
    from stocktracker.lib import catalogue

    assert tuple(SCHEMAS["QuoteRow"]["required"]) == catalogue.QUOTE_FIELDS
    assert set(SCHEMAS["QuoteRow"]["properties"]) == set(catalogue.QUOTE_FIELDS)
    assert tuple(SCHEMAS["IndexRow"]["required"]) == catalogue.INDEX_FIELDS
    assert set(SCHEMAS["ForeignTopicData"]["required"]) == set(catalogue.FOREIGN_FIELDS)
    assert set(SCHEMAS["StatusData"]["required"]) == {"trading_date", *catalogue.EXCHANGES}
    assert SCHEMAS["QuoteRow"]["properties"]["exchange"]["enum"] == list(catalogue.EXCHANGES)
    assert SCHEMAS["QuoteRow"]["properties"]["type"]["enum"] == list(catalogue.INSTRUMENT_TYPES)
    described = SCHEMAS["TopicSnapshot"]["description"]
    assert all(group in described for group in catalogue.BOARD_GROUPS + catalogue.FOREIGN_GROUPS)
