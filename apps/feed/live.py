"""The board's state in memory, kept current from the streaming hub and REST.

Rows stay SSI-shaped (the payload builders read them through
apps/feed/rows.py), each key in one spelling only, the hub's: a REST
DailyStockPrice row is renamed on the way in (ClosePrice -> LastPrice, ...),
so a row never holds two spellings of one field that could disagree.

A REST snapshot is older than what a live hub link sent: a snapshot applied
with `since` T leaves alone every field group (trade, quote, room, status)
of a symbol that the hub updated after T (the source passes the hub's last
drop: older hub data may have missed updates, REST replaces it).

`ActiveBuyVol`/`ActiveSellVol` are ours: X-TRADE `LastVol` summed by `Side`
(`BU` buy, `SD` sell, anything else neither), counted once per trade (a
message whose `TotalVol` did not grow is a repeat), reset each trading day.
"""

import time

# Stream spellings (lower-cased alias -> the spelling the row keeps), by message type.
_COMMON = ("TradingDate", "Time", "Symbol", "MarketId", "Exchange", "TradingSession", "TradingStatus")
_TRADE = (
    "Ceiling", "Floor", "RefPrice", "AvgPrice", "PriorVal", "LastPrice", "LastVol", "TotalVal", "TotalVol",
    "Highest", "Lowest", "Change", "RatioChange", "EstMatchedPrice", "Isin",
)  # fmt: skip
_QUOTE = tuple(f"{side}{kind}{n}" for side in ("Bid", "Ask") for kind in ("Price", "Vol") for n in range(1, 11))
_OHLC = ("Open", "High", "Low", "Close")  # X-TRADE and X carry the session's prices too
_ROOM = ("TotalRoom", "CurrentRoom", "BuyVol", "SellVol", "BuyVal", "SellVal", "Isin")
_INDEX = (
    "IndexId", "IndexValue", "IndexValEst", "PriorIndexValue", "TradingDate", "Time", "Change", "RatioChange",
    "TotalTrade", "TotalQtty", "TotalValue", "IndexName", "IndexType", "Advances", "NoChanges", "Declines",
    "Ceilings", "Floors", "TotalQttyPt", "TotalValuePt", "TotalQttyOd", "TotalValueOd", "AllQty", "AllValue",
    "TradingSession", "MarketId", "Exchange",
)  # fmt: skip


def _names(keys, aliases=None):
    table = {key.lower(): key for key in keys}
    table.update({alias.lower(): key for alias, key in (aliases or {}).items()})
    return table


TRADE_NAMES = _names(_COMMON + _TRADE + _OHLC, {"AvgPrice": "AvgPrice", "Avg": "AvgPrice"})
X_NAMES = {**TRADE_NAMES, **_names(_QUOTE)}
QUOTE_NAMES = _names(_COMMON + _QUOTE)
ROOM_NAMES = _names(
    _COMMON + _ROOM,
    {"FBuyVol": "BuyVol", "FSellVol": "SellVol", "FBuyVal": "BuyVal", "FSellVal": "SellVal", "TradingTime": "Time"},
)
STATUS_NAMES = _names(_COMMON)
INDEX_NAMES = _names(
    _INDEX,
    {
        "IndexID": "IndexId",
        "IndexCode": "IndexId",
        "TypeIndex": "IndexType",
        "Nochanges": "NoChanges",
        "Ceiling": "Ceilings",
        "Floor": "Floors",
        "TotalQttyPT": "TotalQttyPt",
        "TotalValuePT": "TotalValuePt",
    },
)
# REST DailyIndex spellings that differ from MI's.
REST_INDEX_NAMES = {**INDEX_NAMES, "totalmatchvol": "TotalQtty", "totalmatchval": "TotalValue"}

# REST DailyStockPrice -> (stream spelling, field group). Keys not listed keep
# their REST spelling in group "rest" (OpenPrice: the hub's X-TRADE has no open).
REST_STOCK_NAMES = {
    "symbol": ("Symbol", None),
    "market": ("Market", None),
    "tradingdate": ("TradingDate", None),
    "ceilingprice": ("Ceiling", "trade"),
    "floorprice": ("Floor", "trade"),
    "refprice": ("RefPrice", "trade"),
    "closeprice": ("LastPrice", "trade"),
    "highestprice": ("Highest", "trade"),
    "lowestprice": ("Lowest", "trade"),
    "averageprice": ("AvgPrice", "trade"),
    "totalmatchvol": ("TotalVol", "trade"),
    "totalmatchval": ("TotalVal", "trade"),
    "openprice": ("OpenPrice", "rest"),
    "foreignbuyvoltotal": ("BuyVol", "room"),
    "foreignsellvoltotal": ("SellVol", "room"),
    "foreignbuyvaltotal": ("BuyVal", "room"),
    "foreignsellvaltotal": ("SellVal", "room"),
    "foreigncurrentroom": ("CurrentRoom", "room"),
}
_GROUPS = {"X-TRADE": "trade", "X-QUOTE": "quote", "X": "trade", "R": "room", "F": "status"}
_NAMES = {"X-TRADE": TRADE_NAMES, "X-QUOTE": QUOTE_NAMES, "X": X_NAMES, "R": ROOM_NAMES, "F": STATUS_NAMES}
# SSI's 2021 samples spelt the trade and quote types differently.
TYPE_ALIASES = {"TRADE": "X-TRADE", "QUOTE": "X-QUOTE"}


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Board:
    """Rows by symbol (stocks and the future) and index rows by code.

    `version` grows with every change, so a reader can tell "nothing new"
    without comparing rows; `dirty` and `dirty_indices` name what changed
    since the last `take_dirty()`. `index_codes`: the indices kept (their
    spelling); None keeps every index.
    """

    def __init__(self, index_codes=()):
        self.index_codes = None if index_codes is None else {code.lower(): code for code in index_codes}
        self.dirty = set()
        self.dirty_indices = set()
        self.day = None
        self.rows = {}
        self.indices = {}
        self.stamps = {}  # symbol -> {group: monotonic time of the last hub update}
        self.trade_totals = {}  # symbol -> TotalVol of the last X-TRADE counted (REST's total may differ)
        self.version = 0
        self.messages = 0
        self.ignored = 0

    def reset(self, day):
        """A new trading day: nothing of yesterday's board carries over."""
        self.day = day
        self.rows.clear()
        self.indices.clear()
        self.stamps.clear()
        self.trade_totals.clear()
        self.dirty.clear()
        self.dirty_indices.clear()
        self.version += 1

    def take_dirty(self):
        """(symbols, index codes) changed since the last call."""
        symbols, indices = self.dirty, self.dirty_indices
        self.dirty, self.dirty_indices = set(), set()
        return symbols, indices

    # --- the hub --------------------------------------------------------------------

    def apply(self, data_type, content):
        """Apply one hub message; False if it was not for the board."""
        data_type = TYPE_ALIASES.get(data_type, data_type)
        self.messages += 1
        if data_type == "MI":
            return self._apply_index(content, INDEX_NAMES, time.monotonic())
        names = _NAMES.get(data_type)
        if names is None:
            self.ignored += 1
            return False
        update = {}
        for key, value in content.items():
            name = names.get(str(key).lower())
            if name is not None and value is not None and value != "":
                update[name] = value
        symbol = str(update.get("Symbol") or "").strip().upper()
        if not symbol:
            self.ignored += 1
            return False
        row = self.rows.get(symbol)
        if row is None:
            row = self.rows[symbol] = {"Symbol": symbol}
        if data_type in ("X-TRADE", "X"):
            self._count_side(symbol, row, update, content)
        update["Symbol"] = symbol
        row.update(update)
        self.stamps.setdefault(symbol, {})[_GROUPS[data_type]] = time.monotonic()
        self.dirty.add(symbol)
        self.version += 1
        return True

    def _count_side(self, symbol, row, update, content):
        volume = _number(update.get("LastVol"))
        total, before = _number(update.get("TotalVol")), self.trade_totals.get(symbol)
        if volume is None or volume <= 0 or (total is not None and before is not None and total <= before):
            return  # no trade, or one already counted
        if total is not None:
            self.trade_totals[symbol] = total
        side = ""
        for key, value in content.items():
            if str(key).lower() == "side":
                side = str(value or "").strip().upper()
                break
        # From the first trade of the day both are known (0 until a trade of that side).
        row.setdefault("ActiveBuyVol", 0)
        row.setdefault("ActiveSellVol", 0)
        if side == "BU":
            row["ActiveBuyVol"] += int(volume)
        elif side == "SD":
            row["ActiveSellVol"] += int(volume)

    def _apply_index(self, content, names, stamp, since=None):
        update = {}
        for key, value in content.items():
            name = names.get(str(key).lower())
            if name is not None and value is not None and value != "":
                update[name] = value
        raw_code = str(update.get("IndexId") or "").strip()
        code = raw_code or None if self.index_codes is None else self.index_codes.get(raw_code.lower())
        if code is None:
            self.ignored += 1
            return False
        if since is not None and self.stamps.get(("index", code), {}).get("index", -1) > since:
            return False  # the hub sent something newer while the REST answer was in flight
        row = self.indices.setdefault(code, {})
        row.update(update)
        row["IndexId"] = code
        if since is None:
            self.stamps.setdefault(("index", code), {})["index"] = stamp
        self.dirty_indices.add(code)
        self.version += 1
        return True

    # --- REST --------------------------------------------------------------------------

    def apply_rest_stocks(self, raw_rows, since, market=None):
        """DailyStockPrice rows asked for at monotonic moment `since`."""
        for raw in raw_rows:
            update = {}
            groups = {}
            for key, value in raw.items():
                lowered = str(key).lower()
                name, group = REST_STOCK_NAMES.get(lowered, (None, None))
                if name is None:
                    if lowered in ("netbuysellvol", "netbuysellval", "pricechange", "perpricechange"):
                        continue  # derived numbers that would go stale next to the hub's
                    name, group = key, "rest"
                if value is None or value == "":
                    continue
                update[name] = value
                groups[name] = group
            symbol = str(update.get("Symbol") or "").strip().upper()
            if not symbol:
                continue
            if market and not update.get("Market"):
                update["Market"] = market
            stamps = self.stamps.get(symbol, {})
            fresh = {g for g, at in stamps.items() if at > since}
            if fresh:
                update = {k: v for k, v in update.items() if groups.get(k) not in fresh}
            row = self.rows.setdefault(symbol, {"Symbol": symbol})
            row.update(update)
            row["Symbol"] = symbol
            self.dirty.add(symbol)
            self.version += 1

    def apply_rest_index(self, code, raw, since):
        if raw:
            self._apply_index({**raw, "IndexId": code}, REST_INDEX_NAMES, None, since=since)
