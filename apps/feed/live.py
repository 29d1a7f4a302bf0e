"""The board's state in memory, kept current from the streaming hub and REST.

Rows stay SSI-shaped (the payload builders read them through
apps/feed/rows.py), each key in one spelling only, the hub's: a REST
DailyStockPrice row is renamed on the way in (ClosePrice -> LastPrice, ...),
so a row never holds two spellings of one field that could disagree.

A REST snapshot is older than what a live hub link sent: a snapshot applied
with `since` T leaves alone every field group (trade, quote, room, status)
of a symbol that the hub updated after T (the source passes the hub's last
drop: older hub data may have missed updates, REST replaces it).

Codes are normalised to the contract on the way in (`Normal` -> `N`,
`CLOSE` -> `C`, `DERIVATIVES` -> `DER`, any case); a code we do not know is
kept as None, its raw value in `TradingStatusRaw` / `TradingSessionRaw`
(an unknown exchange is dropped: the universe says where a symbol trades).
`TradingTime` and `ReportDate` are read as `Time` and `TradingDate`; "NaN"
(SSI's `AvgPrice` before a trade) is no value.

Fields of ours, next to SSI's:
- `ActiveBuyVol`/`ActiveSellVol`: X-TRADE `LastVol` summed by `Side` (`BU`
  buy, `SD` sell, anything else neither), counted once per trade (a message
  whose `TotalVol` did not grow is a repeat), reset each trading day.
- `ActivePartial`: those sums miss trades, until the next day: the first
  trade counted showed earlier volume (`TotalVol` > `LastVol`), `TotalVol`
  grew by more than the trade, or a hub link carrying trades went down in
  trading hours (`gap()`): the hub replays nothing after a reconnect.
- `ForeignValuesExact`: `BuyVal`/`SellVal` are REST's (exact), not the `R`
  channel's, which on HOSE are volume x last price. An `R` frame whose
  volumes equal REST's last ones keeps REST's values; other frames make them
  approximate again (the topics call non-HOSE values exact in any case).
- `Open`: when the hub sends none, the day's first match (the ATO on HOSE):
  the trade whose `LastVol` is the whole `TotalVol`.
"""

import time

# Stream spellings (lower-cased alias -> the spelling the row keeps), by message type.
_COMMON = ("TradingDate", "Time", "Symbol", "MarketId", "Exchange", "TradingSession", "TradingStatus")
# Other spellings of the common fields (2021 samples, the .NET F model).
_COMMON_ALIASES = {"TradingTime": "Time", "ReportDate": "TradingDate"}
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


TRADE_NAMES = _names(_COMMON + _TRADE + _OHLC, {**_COMMON_ALIASES, "Avg": "AvgPrice"})
X_NAMES = {**TRADE_NAMES, **_names(_QUOTE)}
QUOTE_NAMES = _names(_COMMON + _QUOTE, _COMMON_ALIASES)
ROOM_NAMES = _names(
    _COMMON + _ROOM,
    {**_COMMON_ALIASES, "FBuyVol": "BuyVol", "FSellVol": "SellVol", "FBuyVal": "BuyVal", "FSellVal": "SellVal"},
)
STATUS_NAMES = _names(_COMMON, _COMMON_ALIASES)
INDEX_NAMES = _names(
    _INDEX,
    {
        **_COMMON_ALIASES,
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

# The codes of the contract (docs/asyncapi.yaml Session; SSI's status table)
# and the other spellings the hub was seen to send for them.
SESSION_CODES = frozenset({"ATO", "LO", "ATC", "PLO", "PT", "C", "BREAK", "HALT", "H"})
SESSION_ALIASES = {"CLOSE": "C", "CLOSED": "C"}
STATUS_CODES = frozenset({"N", "D", "H", "S", "NL", "ND", "ST", "SA", "SP"})
STATUS_ALIASES = {"NORMAL": "N"}
EXCHANGE_CODES = frozenset({"HOSE", "HNX", "UPCOM", "DER"})
EXCHANGE_ALIASES = {"DERIVATIVES": "DER"}
# field -> (codes, aliases, the field that keeps an unknown code; None: dropped)
_CODED = {
    "TradingSession": (SESSION_CODES, SESSION_ALIASES, "TradingSessionRaw"),
    "TradingStatus": (STATUS_CODES, STATUS_ALIASES, "TradingStatusRaw"),
    "Exchange": (EXCHANGE_CODES, EXCHANGE_ALIASES, None),
    "MarketId": (EXCHANGE_CODES, EXCHANGE_ALIASES, None),
}
_NOT_NUMBERS = {"nan", "+nan", "-nan", "infinity", "+infinity", "-infinity", "inf", "-inf"}
_OHLC_KEYS = frozenset(_OHLC)


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _present(value):
    """A value SSI really sent: not null, "", NaN or an infinity (as a number or a string)."""
    if value is None or value == "":
        return False
    if type(value) is float:
        return value == value and value not in (float("inf"), float("-inf"))
    return not (type(value) is str and value.strip().lower() in _NOT_NUMBERS)


def normalise_code(field, value):
    """(the contract's code or None, the raw value when it is not one we know)."""
    codes, aliases, _ = _CODED[field]
    text = str(value).strip().upper()
    code = aliases.get(text, text)
    if code in codes:
        return code, None
    return None, value


def _normalise(update):
    for field, (_, _, raw_field) in _CODED.items():
        if field in update:
            code, raw = normalise_code(field, update[field])
            update[field] = code
            if raw_field is not None:
                update[raw_field] = raw


class Board:
    """Rows by symbol (stocks and the future) and index rows by code.

    `version` grows with every change, so a reader can tell "nothing new"
    without comparing rows; `dirty` and `dirty_indices` name what changed
    since the last `take_dirty()`. `index_codes`: the indices kept (their
    spelling); None keeps every index.
    """

    def __init__(self, index_codes=()):
        self.index_codes = None if index_codes is None else {code.lower(): code for code in index_codes}
        self.spellings = {}  # lower-cased index code -> the spelling kept (`spell()`)
        self.dirty = set()
        self.dirty_indices = set()
        self.day = None
        self.rows = {}
        self.indices = {}
        self.stamps = {}  # symbol -> {group: monotonic time of the last hub update}
        self.trade_totals = {}  # symbol -> TotalVol of the last X-TRADE counted (REST's total may differ)
        self.exact_foreign = {}  # symbol -> (buy vol, sell vol, buy value, sell value) of the last REST row
        self.version = 0
        self.messages = 0
        self.ignored = 0

    def spell(self, codes):
        """Keep indices under these spellings (e.g. the universe's `HNXIndex`),
        whatever case the hub sends them in."""
        self.spellings.update({code.lower(): code for code in codes})

    def reset(self, day):
        """A new trading day: nothing of yesterday's board carries over."""
        self.day = day
        self.rows.clear()
        self.indices.clear()
        self.stamps.clear()
        self.trade_totals.clear()
        self.exact_foreign.clear()
        self.dirty.clear()
        self.dirty_indices.clear()
        self.version += 1

    def take_dirty(self):
        """(symbols, index codes) changed since the last call."""
        symbols, indices = self.dirty, self.dirty_indices
        self.dirty, self.dirty_indices = set(), set()
        return symbols, indices

    def gap(self):
        """Trades may have been missed (a link carrying them was down in trading
        hours): every active volume counted so far is partial, for the day."""
        for symbol, row in self.rows.items():
            if "ActiveBuyVol" in row and not row.get("ActivePartial"):
                row["ActivePartial"] = True
                self.dirty.add(symbol)
                self.version += 1

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
            if name is not None and _present(value):
                if name in _OHLC_KEYS and not _number(value):
                    continue  # 0: no price yet, never one that replaces a known open
                update[name] = value
        symbol = str(update.get("Symbol") or "").strip().upper()
        if not symbol:
            self.ignored += 1
            return False
        _normalise(update)
        row = self.rows.get(symbol)
        if row is None:
            row = self.rows[symbol] = {"Symbol": symbol}
        if data_type in ("X-TRADE", "X"):
            self._count_side(symbol, row, update, content)
        elif data_type == "R":
            self._foreign_values(symbol, update)
        if "TradingSession" in update and update["TradingSession"] != row.get("TradingSession"):
            # A new session: an auction's projected price does not carry over.
            update.setdefault("EstMatchedPrice", None)
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
            missed = total - (before or 0.0) - volume
            if missed > 0.5:  # volume traded that no message of ours counted
                update["ActivePartial"] = True
            if before is None and missed <= 0.5 and not (_number(row.get("Open")) or _number(row.get("OpenPrice"))):
                price = update.get("LastPrice")
                if "Open" not in update and _number(price):
                    update["Open"] = price  # the day's first match
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

    def _foreign_values(self, symbol, update):
        """R values stay REST's exact ones while the volumes are those REST gave
        them for; otherwise they are the channel's (approximate on HOSE)."""
        exact = self.exact_foreign.get(symbol)
        same = exact is not None
        for n, (volume, value) in enumerate((("BuyVol", "BuyVal"), ("SellVol", "SellVal"))):
            if volume in update or value in update:
                if same and _number(update.get(volume)) == exact[n]:
                    update[value] = exact[2 + n]
                else:
                    same = False
        if "BuyVal" in update or "SellVal" in update:
            update["ForeignValuesExact"] = same

    def _apply_index(self, content, names, stamp, since=None):
        update = {}
        for key, value in content.items():
            name = names.get(str(key).lower())
            if name is not None and _present(value):
                update[name] = value
        _normalise(update)
        update.pop("TradingSessionRaw", None)  # index rows carry no raw code
        raw_code = str(update.get("IndexId") or "").strip()
        known = self.spellings.get(raw_code.lower())
        code = known or (raw_code or None if self.index_codes is None else self.index_codes.get(raw_code.lower()))
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
                if not _present(value):
                    continue
                update[name] = value
                groups[name] = group
            symbol = str(update.get("Symbol") or "").strip().upper()
            if not symbol:
                continue
            if market and not update.get("Market"):
                update["Market"] = market
            row = self.rows.setdefault(symbol, {"Symbol": symbol})
            stamps = self.stamps.get(symbol, {})
            fresh = {g for g, at in stamps.items() if at > since}
            flows = [_number(update.get(k)) for k in ("BuyVol", "SellVol", "BuyVal", "SellVal")]
            if None not in flows:
                self.exact_foreign[symbol] = tuple(flows)
                # REST's values are exact: they win even over newer hub data for
                # the very volumes the hub shows.
                if "room" not in fresh or [_number(row.get("BuyVol")), _number(row.get("SellVol"))] == flows[:2]:
                    groups["BuyVal"] = groups["SellVal"] = "exact"
                    update["ForeignValuesExact"] = True
                    groups["ForeignValuesExact"] = "exact"
            if fresh:
                update = {k: v for k, v in update.items() if groups.get(k) not in fresh}
            row.update(update)
            row["Symbol"] = symbol
            self.dirty.add(symbol)
            self.version += 1

    def apply_rest_index(self, code, raw, since):
        if raw:
            self._apply_index({**raw, "IndexId": code}, REST_INDEX_NAMES, None, since=since)
