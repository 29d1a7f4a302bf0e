"""Topics of the whole market: rows in the catalogue's fields, deltas that
rebuild the next snapshot exactly, and the worker publishing only what
changed."""

import copy
import datetime as dt
import json
import random

from apps.feed import market
from apps.feed.live import Board
from apps.feed.payloads import FeedData
from apps.feed.runner import Feed
from apps.feed.topics import TopicBook, quote_row
from apps.feed.universe import IndexInfo, Instrument, Universe
from stocktracker.lib import catalogue, keys
from stocktracker.lib.state import get_state

from .conftest import Clock

DAY = dt.date(2026, 11, 26)
MORNING = dt.datetime(2026, 11, 26, 10, 0, tzinfo=market.VN)
ATO = dt.datetime(2026, 11, 26, 9, 5, tzinfo=market.VN)

UNIVERSE = Universe(
    DAY,
    {
        "FPT": Instrument("FPT", "HOSE", "stock", "CTCP FPT"),
        "HPG": Instrument("HPG", "HOSE", "stock", "CTCP Tập đoàn Hòa Phát"),
        "E1VFVN30": Instrument("E1VFVN30", "HOSE", "etf"),
        "CFPT2601": Instrument(
            "CFPT2601", "HOSE", "cw", underlying="FPT", exercise_price=100000, exercise_ratio=5.0,
            maturity=dt.date(2027, 1, 20),
        ),
        "SHS": Instrument("SHS", "HNX", "stock"),
        "ACV": Instrument("ACV", "UPCOM", "stock"),
        "41I1GC000": Instrument("41I1GC000", "DER", "futures", underlying="VN30", lot=1, expiry=dt.date(2026, 12, 17)),
    },
    {
        "VN30": IndexInfo("VN30", "VN30", "HOSE", members=("FPT", "HPG")),
        "VNINDEX": IndexInfo("VNINDEX", "VN-Index", "HOSE"),
    },
)  # fmt: skip


def _board():
    board = Board(index_codes=None)
    board.reset(DAY)
    trade = {"RefPrice": 98500.0, "Ceiling": 105300.0, "Floor": 91700.0, "TotalVol": 1000.0, "TotalVal": 98800000.0}
    board.apply("X-TRADE", {"Symbol": "FPT", "LastPrice": 98800.0, "LastVol": 1000.0, **trade})
    board.apply("X-TRADE", {"Symbol": "HPG", "RefPrice": 26500.0, "LastPrice": 26600.0, "TotalVol": 500.0})
    board.apply("X-TRADE", {"Symbol": "SHS", "RefPrice": 17000.0, "LastPrice": 17100.0, "TotalVol": 100.0})
    board.apply("X-TRADE", {"Symbol": "41I1GC000", "RefPrice": 2080.5, "LastPrice": 2091.2, "TotalVol": 10.0})
    levels = {
        f"{side}{kind}{n}": 99000.0 + n * 100 for side in ("Bid", "Ask") for kind in ("Price",) for n in range(1, 11)
    }
    vols = {f"{side}Vol{n}": 100.0 * n for side in ("Bid", "Ask") for n in range(1, 11)}
    board.apply("X-QUOTE", {"Symbol": "SHS", **levels, **vols})
    board.apply("X-QUOTE", {"Symbol": "FPT", **levels, **vols})
    board.apply("MI", {"IndexId": "VN30", "IndexValue": 2088.9, "PriorIndexValue": 2080.0})
    return board


def test_quote_rows_follow_the_catalogue_and_each_exchange_s_depth():
    board = _board()
    fpt = quote_row(UNIVERSE.get("FPT"), board.rows["FPT"], phase="continuous")
    assert tuple(fpt) == catalogue.QUOTE_FIELDS
    assert (fpt["last"], fpt["ref"], fpt["change"], fpt["change_pct"]) == (98800, 98500, 300, 0.3)
    assert len(fpt["bids"]) == 3 and len(fpt["asks"]) == 3  # HOSE publishes three levels
    shs = quote_row(UNIVERSE.get("SHS"), board.rows["SHS"], phase="continuous")
    assert len(shs["bids"]) == 10 and shs["bids"][0] == [99100, 100]  # HNX: ten
    future = quote_row(UNIVERSE.get("41I1GC000"), board.rows["41I1GC000"], vn30=2088.9, phase="continuous")
    assert (future["last"], future["basis"], future["expiry"]) == (2091.2, 2.3, "2026-12-17")
    assert future["foreign_buy_volume"] is None and future["open"] is None  # unknown, never 0


def test_the_projected_price_shows_in_the_auctions_only():
    board = _board()
    board.apply("X-TRADE", {"Symbol": "FPT", "EstMatchedPrice": 99000.0})
    assert quote_row(UNIVERSE.get("FPT"), board.rows["FPT"], phase="ato")["projected"] == 99000
    assert quote_row(UNIVERSE.get("FPT"), board.rows["FPT"], phase="continuous")["projected"] is None


def _apply(snapshot, delta, board_topic):
    if not board_topic:
        return {**snapshot, **delta}
    out = copy.deepcopy(snapshot)
    for symbol, fields in delta.items():
        if fields is None:
            out.pop(symbol, None)
        elif symbol in out:
            out[symbol].update(fields)
        else:
            out[symbol] = fields
    return out


def test_a_client_applying_deltas_holds_every_topic_s_next_snapshot():
    board, book, rnd = _board(), TopicBook(UNIVERSE), random.Random(7)
    held = {}
    symbols, indices = board.take_dirty()
    for name, snapshot, delta in book.changes(board, MORNING, symbols=symbols, indices=indices, source_ms=1):
        assert delta is None  # the first publish of every topic is its snapshot
        held[name] = copy.deepcopy(snapshot)
    assert {"board:VN30", "board:HOSE", "board:HNX", "board:FU", "quote:FPT", "index:VN30", "status"} <= set(held)
    assert "foreign:VN30" in held and "foreign:HOSE" in held
    for step in range(200):
        symbol = rnd.choice(["FPT", "HPG", "SHS", "41I1GC000"])
        price = rnd.choice([98800.0, 98900.0, 99000.0, 17200.0])
        board.apply("X-TRADE", {"Symbol": symbol, "LastPrice": price, "LastVol": 100.0, "TotalVol": 1000.0 + step})
        if rnd.random() < 0.3:
            board.apply("R", {"Symbol": symbol, "BuyVol": float(step * 10), "BuyVal": float(step * 1e6)})
        symbols, indices = board.take_dirty()
        for name, snapshot, delta in book.changes(board, MORNING, symbols=symbols, indices=indices, source_ms=step):
            assert delta is not None and delta != {}
            held[name] = _apply(held[name], delta, catalogue.is_board(name))
            assert held[name] == snapshot, name
    # Only what changed is sent: one trade of FPT is not the whole board.
    board.apply("X-TRADE", {"Symbol": "FPT", "LastPrice": 99100.0, "TotalVol": 5000.0})
    symbols, indices = board.take_dirty()
    changes = {n: d for n, _, d in book.changes(board, MORNING, symbols=symbols, indices=indices, source_ms=999)}
    assert set(changes["board:HOSE"]) == {"FPT"} and "HPG" not in changes["board:VN30"]
    assert set(changes["quote:FPT"]) <= {"last", "change", "change_pct", "volume", "avg"}
    assert "quote:HPG" not in changes and "board:HNX" not in changes


class BoardSource:
    """A source that keeps a whole-market board (as the simulator and the SSI hub path do)."""

    name, simulated = "test", True

    def __init__(self, clock):
        self.clock, self.universe, self.board = clock, UNIVERSE, _board()

    def now(self):
        return self.clock()

    async def fetch(self, needs):
        return FeedData(trading_date=DAY, phase=market.phase(self.now()), source_ms=market.epoch_ms(self.now()))

    def interval(self):
        return 1.0

    async def aclose(self):
        pass


async def _latest(topic):
    return json.loads(await get_state().topic_snapshot(topic))


async def test_the_worker_publishes_topics_while_someone_follows_one():
    source = BoardSource(Clock(MORNING))
    feed = Feed(source, elect=True)
    await feed.cycle()
    assert await get_state().topic_snapshot("board:VN30") is None  # nobody follows a topic: nothing built
    assert await get_state().lease_acquire("poll-1", [(keys.TOPIC_SUBSCRIBERS, None)], 60) == 0
    await feed.cycle()
    first = await _latest("board:VN30")
    assert (first["type"], first["seq"], set(first["data"])) == ("snapshot", 1, {"FPT", "HPG"})
    source.board.apply("X-TRADE", {"Symbol": "HPG", "LastPrice": 26700.0, "TotalVol": 900.0})
    await feed.cycle()
    second = await _latest("board:VN30")
    assert second["seq"] == 2 and second["data"]["HPG"]["last"] == 26700
    (delta,) = [json.loads(t) for t in await get_state().topic_window("board:VN30")]
    assert (delta["prev"], delta["seq"], set(delta["data"])) == (1, 2, {"HPG"})
    assert (await _latest("quote:HPG"))["data"]["volume"] == 900
    assert (await _latest("quote:FPT"))["seq"] == 1  # FPT did not change: not published again
    await feed.cycle()  # nothing changed: nothing published
    assert (await _latest("board:VN30"))["seq"] == 2


async def test_every_published_topic_frame_matches_the_document():
    from tests.asyncapi import validator

    source = BoardSource(Clock(MORNING))
    feed = Feed(source, elect=True)
    assert await get_state().lease_acquire("poll-1", [(keys.TOPIC_SUBSCRIBERS, None)], 60) == 0
    await feed.cycle()
    for symbol, price in (("FPT", 99000.0), ("SHS", 17300.0), ("41I1GC000", 2093.0)):
        source.board.apply("X-TRADE", {"Symbol": symbol, "LastPrice": price, "TotalVol": 7000.0, "Side": "BU"})
        source.board.apply("R", {"Symbol": symbol, "BuyVol": 100.0, "SellVol": 50.0, "BuyVal": 9e6, "SellVal": 4e6})
    source.board.apply("MI", {"IndexId": "VN30", "IndexValue": 2090.1, "PriorIndexValue": 2080.0})
    await feed.cycle()
    snapshots, deltas = validator("/components/schemas/TopicSnapshot"), validator("/components/schemas/TopicDelta")
    topics = [*(f"board:{g}" for g in ("VN30", "HOSE", "HNX", "FU")), "quote:FPT", "quote:41I1GC000"]
    topics += ["index:VN30", "foreign:VN30", "foreign:HOSE", "status"]
    for topic in topics:
        frame = await _latest(topic)
        assert not [e.message for e in snapshots.iter_errors(frame)], topic
        for text in await get_state().topic_window(topic):
            assert not [e.message for e in deltas.iter_errors(json.loads(text))], topic
