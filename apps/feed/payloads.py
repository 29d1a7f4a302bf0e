"""Pure builders of the three stream payloads from SSI-shaped source rows.

Every field is documented once, in docs/asyncapi.yaml. Stock prices are whole
VND, volumes shares, values VND; index values and futures prices are points.
A number that is not known is None (JSON null), never 0.
"""

from dataclasses import dataclass, field
from functools import cached_property

from stocktracker.lib.catalogue import FOREIGN, INDEX, MARKET

from . import rows as r
from .market import INDEX_CODES, INDEX_NAMES

SPEED_WINDOW_S = 60
TOP_N = 5


@dataclass
class Futures:
    symbol: str
    alias: str
    expiry: object  # datetime.date or None
    row: dict | None  # DailyStockPrice row of the contract (market=DER)


@dataclass
class FeedData:
    """One cycle's source data, as a source (SSI or the simulator) delivers it."""

    trading_date: object  # datetime.date
    phase: str
    source_ms: int
    simulated: bool = False
    basket: list = field(default_factory=list)  # VN30 constituents
    extra: list = field(default_factory=list)  # EXTRA_SYMBOLS
    stocks: list = field(default_factory=list)  # DailyStockPrice rows: HOSE board (+ extras)
    futures: Futures | None = None
    indices: dict = field(default_factory=dict)  # DailyIndex rows by index code
    points: dict | None = None  # sparkline points by index code, when the source has them

    @cached_property
    def quotes(self):
        """Normalised quotes by symbol, parsed once per cycle's data and shared by
        every builder (market, foreign, the board's foreign totals). A FeedData
        is not changed once a source delivered it."""
        quotes = {}
        for raw in self.stocks:
            quote = stock(raw)
            if quote["symbol"]:
                quotes[quote["symbol"]] = quote
        return quotes


# --- rows --------------------------------------------------------------------


def stock(raw):
    """Normalised stock quote from an SSI-shaped row (DailyStockPrice, or the
    hub's X-TRADE/X-QUOTE/R/F fields merged into one row)."""
    row = r.read(raw, r.STOCK_FIELDS)
    quote = {"symbol": (row["symbol"] or "").strip().upper(), "market": _code(row["market"])}
    for name in ("ref", "ceiling", "floor", "open", "high", "low", "last", "avg"):
        quote[name] = r.to_price(row[name])
    for name in _COUNTS:
        quote[name] = r.to_int(row[name])
    quote["bids"] = _levels(row, "bid", r.to_price)
    quote["asks"] = _levels(row, "ask", r.to_price)
    quote["session"] = _code(row["session"])
    quote["status"] = _code(row["status"])
    return quote


_COUNTS = (
    "volume",
    "value",
    "foreign_buy_volume",
    "foreign_sell_volume",
    "foreign_buy_value",
    "foreign_sell_value",
    "foreign_room",
    "room_total",
    "last_volume",
    "active_buy_volume",
    "active_sell_volume",
)


def _code(value):
    """An upstream code (exchange, session, status) as text; None if absent."""
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def _levels(row, side, price_of):
    """Up to three [price, volume] levels of one side, best first; None when the
    source has no order book at all (REST), [] when the side is empty (no
    sellers at the ceiling: SSI sends a zero price)."""
    prices = [row[f"{side}_price_{n}"] for n in (1, 2, 3)]
    volumes = [row[f"{side}_vol_{n}"] for n in (1, 2, 3)]
    if all(value is None for value in prices + volumes):
        return None
    levels = []
    for price, volume in zip(prices, volumes, strict=True):
        price = price_of(price)
        if price is not None:
            levels.append([price, r.to_int(volume)])
    return levels


def _change(last, ref, places=2):
    if last is None or not ref:
        return None, None
    change = last - ref
    if isinstance(change, float):
        change = round(change, 2)
    return change, round(change * 100 / ref, places)


def board_symbols(data):
    """VN30 constituents, then any extra symbols not already among them."""
    seen = set(data.basket)
    return list(data.basket) + [s for s in data.extra if s not in seen and not seen.add(s)]


def index_value(data, code):
    row = data.indices.get(code)
    return r.to_float(r.read(row, r.INDEX_FIELDS, ("value",))["value"]) if row else None


# --- market -------------------------------------------------------------------


def _stock_entry(symbol, quote):
    quote = quote or {}
    last, ref = quote.get("last"), quote.get("ref")
    change, change_pct = _change(last, ref)
    return {
        "symbol": symbol,
        "exchange": quote.get("market"),
        "ref": ref,
        "ceiling": quote.get("ceiling"),
        "floor": quote.get("floor"),
        "open": quote.get("open"),
        "high": quote.get("high"),
        "low": quote.get("low"),
        "last": last,
        "change": change,
        "change_pct": change_pct,
        "avg": quote.get("avg"),
        "volume": quote.get("volume"),
        "value": quote.get("value"),
        "foreign_buy_volume": quote.get("foreign_buy_volume"),
        "foreign_sell_volume": quote.get("foreign_sell_volume"),
        "foreign_room": quote.get("foreign_room"),
        "room_total": quote.get("room_total"),
        "bids": quote.get("bids"),
        "asks": quote.get("asks"),
        "last_volume": quote.get("last_volume"),
        "active_buy_volume": quote.get("active_buy_volume"),
        "active_sell_volume": quote.get("active_sell_volume"),
        "session": quote.get("session"),
        "status": quote.get("status"),
    }


def futures_entry(futures, vn30):
    row = r.read(futures.row or {}, r.STOCK_FIELDS)
    prices = {name: r.to_points(row[name]) for name in ("ref", "ceiling", "floor", "open", "high", "low", "last")}
    change, change_pct = _change(prices["last"], prices["ref"])
    basis = round(prices["last"] - vn30, 2) if prices["last"] is not None and vn30 is not None else None
    return {
        "symbol": futures.symbol,
        "alias": futures.alias,
        "expiry": futures.expiry.isoformat() if futures.expiry else None,
        **prices,
        "change": change,
        "change_pct": change_pct,
        "volume": r.to_int(row["volume"]),
        "vn30": vn30,
        "basis": basis,
        "bids": _levels(row, "bid", r.to_points),
        "asks": _levels(row, "ask", r.to_points),
        "last_volume": r.to_int(row["last_volume"]),
        "active_buy_volume": r.to_int(row["active_buy_volume"]),
        "active_sell_volume": r.to_int(row["active_sell_volume"]),
        "session": _code(row["session"]),
        "status": _code(row["status"]),
    }


def build_market(data):
    quotes = data.quotes
    return {
        "phase": data.phase,
        "trading_date": data.trading_date.isoformat(),
        "stocks": [_stock_entry(symbol, quotes.get(symbol)) for symbol in board_symbols(data)],
        "futures": futures_entry(data.futures, index_value(data, "VN30")) if data.futures else None,
    }


# --- foreign ------------------------------------------------------------------


def _minus(a, b):
    return a - b if a is not None and b is not None else None


def _flow(quote):
    """Foreign flow of one symbol; a number the source did not send stays None."""
    buy_volume, sell_volume = quote["foreign_buy_volume"], quote["foreign_sell_volume"]
    buy_value, sell_value = quote["foreign_buy_value"], quote["foreign_sell_value"]
    return {
        "buy_volume": buy_volume,
        "sell_volume": sell_volume,
        "net_volume": _minus(buy_volume, sell_volume),
        "buy_value": buy_value,
        "sell_value": sell_value,
        "net_value": _minus(buy_value, sell_value),
    }


_FLOW_KEYS = ("buy_volume", "sell_volume", "net_volume", "buy_value", "sell_value", "net_value")


def _total(flows):
    """Sums over the symbols that report each number; None when none does."""
    totals = {}
    for key in _FLOW_KEYS:
        known = [flow[key] for flow in flows if flow[key] is not None]
        totals[key] = sum(known) if known else None
    return totals


def _on_hose(quote):
    # Only rows that say HOSE: an extra from HNX/UPCOM, or one whose exchange
    # is unknown, is not part of the HOSE board's totals.
    return quote["market"] == "HOSE"


def board_flow(data):
    """Foreign totals over the whole HOSE board: the numbers the speed is measured on."""
    return _total([_flow(q) for q in data.quotes.values() if _on_hose(q)])


def foreign_speed(history, window_s=SPEED_WINDOW_S):
    """Foreign buy/sell/net value per minute over the last `window_s` seconds.

    `history` is [(source_ms, board_buy_value, board_sell_value), ...], oldest
    first, ending with the current totals. The baseline is the newest sample at
    least a window old, else the oldest one; None when no time has passed or
    the totals went down (a new day).
    """
    speed = {"window_s": window_s, "buy_value_per_min": None, "sell_value_per_min": None, "net_value_per_min": None}
    if len(history) < 2:
        return speed
    now_ms, buy, sell = history[-1]
    base = history[0]
    for sample in history:
        if sample[0] <= now_ms - window_s * 1000:
            base = sample
    span_ms = now_ms - base[0]
    if None in (buy, sell, base[1], base[2]):
        return speed
    if span_ms <= 0 or buy < base[1] or sell < base[2]:
        return speed
    buy_rate = round((buy - base[1]) * 60_000 / span_ms)
    sell_rate = round((sell - base[2]) * 60_000 / span_ms)
    speed.update(buy_value_per_min=buy_rate, sell_value_per_min=sell_rate, net_value_per_min=buy_rate - sell_rate)
    return speed


def build_foreign(data, history=()):
    quotes = data.quotes
    flows = {symbol: _flow(q) for symbol, q in quotes.items()}
    hose = [flows[s] for s, q in quotes.items() if _on_hose(q)]
    basket = [flows[s] for s in data.basket if s in flows]
    ranked = sorted(
        ((s, f) for s, f in flows.items() if _on_hose(quotes[s]) and f["net_value"] is not None),
        key=lambda item: (item[1]["net_value"], item[0]),
    )
    top_sellers = [_top(s, f) for s, f in ranked[:TOP_N] if f["net_value"] < 0]
    top_buyers = [_top(s, f) for s, f in reversed(ranked[-TOP_N:]) if f["net_value"] > 0]
    rows = []
    for symbol in board_symbols(data):
        flow = flows.get(symbol)
        if flow is None:
            rows.append(dict.fromkeys(_ROW_KEYS) | {"symbol": symbol})
        else:
            quote = quotes[symbol]
            rows.append({"symbol": symbol, **flow, "room": quote["foreign_room"], "room_total": quote["room_total"]})
    return {
        "trading_date": data.trading_date.isoformat(),
        "vn30": _total(basket),
        "board": _total(hose),
        "top_buyers": top_buyers,
        "top_sellers": top_sellers,
        "rows": rows,
        "speed": foreign_speed(list(history)),
    }


_ROW_KEYS = ("symbol", *_FLOW_KEYS, "room", "room_total")


def _top(symbol, flow):
    return {"symbol": symbol, "net_volume": flow["net_volume"], "net_value": flow["net_value"]}


# --- index --------------------------------------------------------------------


def index_entry(code, raw, points=()):
    row = r.read(raw or {}, r.INDEX_FIELDS)
    value = r.to_float(row["value"])
    change = r.to_float(row["change"])
    prior = r.to_float(row["prior"])
    if prior is None and value is not None and change is not None:
        prior = round(value - change, 2)  # DailyIndex has no prior close
    if change is None and value is not None and prior is not None:
        change = round(value - prior, 2)
    change_pct = r.to_float(row["change_pct"])
    if change_pct is None and change is not None and prior:
        change_pct = round(change * 100 / prior, 2)
    return {
        "code": code,
        "name": row["name"] or INDEX_NAMES.get(code, code),
        "value": value,
        "prior": prior,
        "change": change,
        "change_pct": change_pct,
        "volume": r.to_int(row["volume"]),
        "value_traded": r.to_int(row["value_traded"]),
        "advances": r.to_int(row["advances"]),
        "declines": r.to_int(row["declines"]),
        "unchanged": r.to_int(row["unchanged"]),
        "ceilings": r.to_int(row["ceilings"]),
        "floors": r.to_int(row["floors"]),
        "points": [list(point) for point in points],
    }


def build_index(data, points=None):
    points = points or {}
    return {
        "trading_date": data.trading_date.isoformat(),
        "indices": [index_entry(code, data.indices.get(code), points.get(code, ())) for code in INDEX_CODES],
    }


BUILDERS = {MARKET: build_market, FOREIGN: build_foreign, INDEX: build_index}


def fingerprint(value):
    """An immutable copy of a payload to compare the next one with (`==`): equal
    data, equal fingerprint, and no JSON. Not a hash: hash(-1) == hash(-2) in
    CPython, so a hash would hide a change from -1 to -2."""
    return _freeze(value)


def _freeze(value):
    if isinstance(value, dict):
        return tuple((key, _freeze(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value
