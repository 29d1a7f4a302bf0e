"""The topics of the whole market, built from the board (`live.Board`) and
the universe, and what changed in them since they were last published.

Per publish tick: every instrument that changed gets its row again (the
catalogue's fields, from its SSI-shaped board row); a field-level diff
against the row last published says what changed; the diff goes to every
topic the instrument is in (`quote:SYM`, the `board:` groups, the
`foreign:` groups it counts in). Each changed topic is published once with
its complete snapshot and its delta (`apps.streams.publish.publish_topic`).
Rows are shared between the topics that show them: a board snapshot is a
map of the very row objects its quotes publish.
"""

import logging
from collections import deque

from stocktracker.lib import catalogue

from . import market
from . import rows as r
from .payloads import foreign_speed

log = logging.getLogger("apps.feed")

BOARD_DEPTH = 3  # levels a side on board rows (as iBoard shows them); quote rows carry what the exchange publishes
TOP_N = 5
FLOW_WINDOW_MS = 120_000


def _number(value):
    """Whole VND or shares: hub numbers are mostly floats (22950.0), REST strings."""
    if type(value) is float:
        return int(value) if value == value and value not in (float("inf"), float("-inf")) else None
    if type(value) is int:
        return value
    return r.to_int(value)


def _price(value):
    number = _number(value)
    return number or None  # SSI sends 0 where no price exists yet


def _points(value):
    if type(value) is float:
        return round(value, 1) or None if value == value else None
    return r.to_points(value)


def _code(value):
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def _levels(raw, side, depth, price_of):
    levels = []
    for n in range(1, depth + 1):
        price = price_of(raw.get(f"{side}Price{n}"))
        if price is None:
            continue
        levels.append([price, _number(raw.get(f"{side}Vol{n}"))])
    return levels


def _change(last, ref):
    if last is None or not ref:
        return None, None
    change = last - ref
    if isinstance(change, float):
        change = round(change, 2)
    return change, round(change * 100 / ref, 2)


def quote_row(instrument, raw, *, vn30=None, phase=None):
    """The catalogue's quote row of `instrument` from its SSI-shaped board row.
    `vn30`: the VN30 index value (a future's basis); `phase`: the exchange's
    session phase (the projected price shows during the auctions)."""
    futures = instrument.exchange == "DER"
    price_of = _points if futures else _price
    get = raw.get
    last, ref = price_of(get("LastPrice")), price_of(get("RefPrice"))
    change, change_pct = _change(last, ref)
    depth = catalogue.BOOK_DEPTH.get(instrument.exchange, 3)
    volume, value = _number(get("TotalVol")), _number(get("TotalVal"))
    avg = price_of(get("AvgPrice"))
    if avg is None and volume and value and not futures:
        avg = round(value / volume)
    session = _code(get("TradingSession"))
    projected = price_of(get("EstMatchedPrice")) if _in_auction(session, phase) else None
    row = {
        "symbol": instrument.symbol,
        "exchange": instrument.exchange,
        "type": instrument.type,
        "name": instrument.name or None,
        "ref": ref,
        "ceiling": price_of(get("Ceiling")),
        "floor": price_of(get("Floor")),
        "open": price_of(get("Open") or get("OpenPrice")),
        "high": price_of(get("Highest") or get("High")),
        "low": price_of(get("Lowest") or get("Low")),
        "last": last,
        "change": change,
        "change_pct": change_pct,
        "avg": avg,
        "projected": projected,
        "volume": volume,
        "value": value,
        "bids": _levels(raw, "Bid", depth, price_of),
        "asks": _levels(raw, "Ask", depth, price_of),
        "last_volume": _number(get("LastVol")),
        "active_buy_volume": _number(get("ActiveBuyVol")),
        "active_sell_volume": _number(get("ActiveSellVol")),
        "active_partial": bool(get("ActivePartial")),
        "foreign_buy_volume": _number(get("BuyVol")),
        "foreign_sell_volume": _number(get("SellVol")),
        "foreign_buy_value": _number(get("BuyVal")),
        "foreign_sell_value": _number(get("SellVal")),
        "foreign_values_exact": instrument.exchange != "HOSE" or bool(get("ForeignValuesExact")),
        "foreign_room": _number(get("CurrentRoom")),
        "room_total": _number(get("TotalRoom")),
        "session": session,
        "session_raw": _raw(get("TradingSessionRaw")),
        "status": _code(get("TradingStatus")),
        "status_raw": _raw(get("TradingStatusRaw")),
        "underlying": instrument.underlying,
        "exercise_price": instrument.exercise_price,
        "exercise_ratio": instrument.exercise_ratio,
        "maturity": instrument.maturity.isoformat() if instrument.maturity else None,
        "expiry": instrument.expiry.isoformat() if instrument.expiry else None,
        "basis": round(last - vn30, 2) if futures and last is not None and vn30 is not None else None,
    }
    return row


def _in_auction(session, phase):
    """An opening or closing auction is on: the symbol's own session says so,
    or, when it says nothing, the exchange's clock (`phase`)."""
    if session is not None:
        return session in ("ATO", "ATC")
    return phase in ("ato", "atc")


def _raw(value):
    """An upstream code we do not know, as text (the hub may send a number)."""
    return None if value is None else str(value)[:20]


def index_row(info, raw, *, phase=None):
    """The catalogue's index row; `phase`: the index's exchange's phase (MI
    frames carry no session of their own in SSI's samples)."""
    get = raw.get
    value = r.to_float(get("IndexValue"))
    prior = r.to_float(get("PriorIndexValue"))
    change = r.to_float(get("Change"))
    if prior is None and value is not None and change is not None:
        prior = round(value - change, 2)
    if change is None and value is not None and prior is not None:
        change = round(value - prior, 2)
    change_pct = r.to_float(get("RatioChange"))
    if change_pct is None and change is not None and prior:
        change_pct = round(change * 100 / prior, 2)
    return {
        "code": info.code,
        "name": info.name or get("IndexName") or info.code,
        "exchange": info.exchange,
        "value": value,
        "projected": r.to_float(get("IndexValEst")) if _in_auction(_code(get("TradingSession")), phase) else None,
        "prior": prior,
        "change": change,
        "change_pct": change_pct,
        "volume": _number(get("TotalQtty")),
        "value_traded": _number(get("TotalValue")),
        "advances": _number(get("Advances")),
        "declines": _number(get("Declines")),
        "unchanged": _number(get("NoChanges")),
        "ceilings": _number(get("Ceilings")),
        "floors": _number(get("Floors")),
        "session": _code(get("TradingSession")),
    }


def diff(old, new):
    """The fields of `new` that differ from `old` (all of `new` when `old` is None)."""
    if old is None:
        return new
    return {key: value for key, value in new.items() if old.get(key) != value}


def _board_row(row):
    """A quote row as a board shows it: three levels a side."""
    if len(row["bids"]) <= BOARD_DEPTH and len(row["asks"]) <= BOARD_DEPTH:
        return row
    return {**row, "bids": row["bids"][:BOARD_DEPTH], "asks": row["asks"][:BOARD_DEPTH]}


_FLOW = ("buy_volume", "sell_volume", "net_volume", "buy_value", "sell_value", "net_value")


def _flow(row):
    buy_volume, sell_volume = row["foreign_buy_volume"], row["foreign_sell_volume"]
    buy_value, sell_value = row["foreign_buy_value"], row["foreign_sell_value"]
    return (
        buy_volume,
        sell_volume,
        None if buy_volume is None or sell_volume is None else buy_volume - sell_volume,
        buy_value,
        sell_value,
        None if buy_value is None or sell_value is None else buy_value - sell_value,
    )


def foreign_data(day, rows, history):
    """foreign:<GROUP> from the group's rows: totals over the rows that report
    each number, the top net buyers and sellers by value, and the speed."""
    sums = [None] * 6
    ranked = []
    exact = True
    for row in rows:
        flow = _flow(row)
        for i, value in enumerate(flow):
            if value is not None:
                sums[i] = value if sums[i] is None else sums[i] + value
        if flow[5] is not None:
            ranked.append((flow[5], row["symbol"], flow[2]))
        exact = exact and row["foreign_values_exact"]
    ranked.sort()
    top = lambda items: [{"symbol": s, "net_volume": nv, "net_value": v} for v, s, nv in items]  # noqa: E731
    totals = dict(zip(_FLOW, sums, strict=True)) | {"values_exact": exact}
    return {
        "trading_date": day,
        "totals": totals,
        "top_buyers": top([item for item in reversed(ranked[-TOP_N:]) if item[0] > 0]),
        "top_sellers": top([item for item in ranked[:TOP_N] if item[0] < 0]),
        "speed": foreign_speed(list(history)),
    }


class TopicBook:
    """What this publisher last published of every topic, and what changed
    since. Starts empty: the first publish of each topic is its snapshot
    alone (nothing to diff against)."""

    def __init__(self, universe):
        self.universe = universe
        self.memberships = universe.memberships()
        self.rows = {}  # symbol -> its quote row as last published
        self.board_rows = {}  # symbol -> its board row (the quote row, three levels)
        self.index_rows = {}  # code -> its index row as last published
        self.published = {}  # topic -> data last published (the snapshot a delta applies to)
        self.flows = {group: deque() for group in catalogue.FOREIGN_GROUPS}  # (ms, buy value, sell value)
        self.status = None
        self.phases = None

    def changes(self, board, moment, *, symbols, indices, source_ms):
        """[(topic, snapshot data, delta data or None)] for every topic that
        changed, from the board rows of `symbols` and `indices` that changed."""
        out = []
        day = market.trading_date(moment).isoformat()
        phases = {exchange: market.phase(moment, exchange) for exchange in catalogue.EXCHANGES}
        if phases != self.phases:
            # An auction began or ended: projected values appear or clear
            # although no message came for them.
            symbols = set(symbols) | {s for s, raw in board.rows.items() if raw.get("EstMatchedPrice")}
            indices = set(indices) | {c for c, raw in board.indices.items() if raw.get("IndexValEst")}
            self.phases = phases
        vn30 = r.to_float((board.indices.get("VN30") or {}).get("IndexValue"))
        changed = {}  # symbol -> its quote row's changed fields
        board_changed = {}  # symbol -> its board row's changed fields
        universe = self.universe
        for symbol in symbols:
            instrument = universe.instruments.get(symbol)
            raw = board.rows.get(symbol)
            if instrument is None or raw is None:
                continue
            row = quote_row(instrument, raw, vn30=vn30, phase=phases.get(instrument.exchange))
            delta = diff(self.rows.get(symbol), row)
            if not delta:
                continue
            self.rows[symbol] = row
            changed[symbol] = delta
            shown = _board_row(row)
            board_delta = diff(self.board_rows.get(symbol), shown)
            self.board_rows[symbol] = shown
            if board_delta:
                board_changed[symbol] = board_delta
        for symbol, delta in changed.items():
            out.append(self._one(catalogue.topic(catalogue.QUOTE, symbol), self.rows[symbol], delta))
        groups = {}
        for symbol in board_changed:
            for group in self.memberships.get(symbol, ()):
                groups.setdefault(group, {})[symbol] = board_changed[symbol]
        for group, deltas in groups.items():
            name = catalogue.topic(catalogue.BOARD, group)
            snapshot = {s: self.board_rows[s] for s in universe.group(group) if s in self.board_rows}
            first = name not in self.published
            self.published[name] = snapshot
            out.append((name, snapshot, None if first else deltas))
        for code in indices:
            info = universe.indices.get(code)
            raw = board.indices.get(code)
            if info is None or raw is None:
                continue
            row = index_row(info, raw, phase=phases.get(info.exchange))
            delta = diff(self.index_rows.get(code), row)
            if delta:
                self.index_rows[code] = row
                out.append(self._one(catalogue.topic(catalogue.INDEX_TOPIC, code), row, delta))
        touched = {g for s in changed for g in self.memberships.get(s, ()) if g in catalogue.FOREIGN_GROUPS}
        for group in touched:
            rows = [self.rows[s] for s in universe.group(group) if s in self.rows]
            history = self.flows[group]
            totals = foreign_data(day, rows, ())["totals"]
            history.append((source_ms, totals["buy_value"], totals["sell_value"]))
            while history and history[0][0] < source_ms - FLOW_WINDOW_MS:
                history.popleft()
            data = foreign_data(day, rows, history)
            name = catalogue.topic(catalogue.FOREIGN_TOPIC, group)
            delta = diff(self.published.get(name), data)
            if delta:
                out.append(self._one(name, data, delta))
        status = {"trading_date": day, **phases}
        if status != self.status:
            out.append(self._one(catalogue.topic(catalogue.STATUS), status, diff(self.status, status)))
            self.status = status
        return out

    def _one(self, name, snapshot, delta):
        first = name not in self.published
        self.published[name] = snapshot
        return name, snapshot, None if first else delta

    def forget(self):
        """Another process may have published meanwhile (a new leader term):
        the next publish of every topic is its snapshot alone."""
        self.published.clear()
        self.status = None
