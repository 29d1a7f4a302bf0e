"""Reading SSI-shaped rows: case-insensitive keys, field aliases, exact numbers.

SSI serialises numbers as strings ("663258204999.9850"), sometimes as JSON
numbers, and leaves unknowns as null or "". Its field tables and JSON samples
spell some keys differently; each field below lists every spelling seen.
"""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

STOCK_FIELDS = {
    "symbol": ("Symbol", "StockSymbol"),
    "market": ("Market", "MarketId", "Exchange"),
    "trading_date": ("TradingDate",),
    "ref": ("RefPrice", "Reference", "BasicPrice"),
    "ceiling": ("CeilingPrice", "Ceiling"),
    "floor": ("FloorPrice", "Floor"),
    "open": ("OpenPrice", "Open"),
    "high": ("HighestPrice", "HighPrice", "Highest", "High"),
    "low": ("LowestPrice", "LowPrice", "Lowest", "Low"),
    "last": ("ClosePrice", "LastPrice", "MatchPrice", "Close"),
    "avg": ("AveragePrice", "AvgPrice", "Avg"),
    "volume": ("TotalMatchVol", "TotalVol", "TotalTradedVol"),
    "value": ("TotalMatchVal", "TotalVal", "TotalTradedValue"),
    "foreign_buy_volume": ("ForeignBuyVolTotal", "FBuyVol", "BuyVol"),
    "foreign_sell_volume": ("ForeignSellVolTotal", "FSellVol", "SellVol"),
    "foreign_buy_value": ("ForeignBuyValTotal", "FBuyVal", "BuyVal"),
    "foreign_sell_value": ("ForeignSellValTotal", "Toreignsellvaltotal", "FSellVal", "SellVal"),
    "foreign_net_volume": ("NetBuySellVol", "Netforeivol"),
    "foreign_net_value": ("NetBuySellVal", "Netforeignval"),
    "foreign_room": ("ForeignCurrentRoom", "CurrentRoom"),
    "room_total": ("TotalRoom", "ForeignTotalRoom"),
    # Stream-only fields (X-QUOTE, X-TRADE, F); ActiveBuyVol/ActiveSellVol are
    # our names for X-TRADE's LastVol summed by Side (BU/SD).
    **{
        f"{side}_{kind}_{n}": (f"{side.capitalize()}{kind.capitalize()}{n}",)
        for side in ("bid", "ask")
        for kind in ("price", "vol")
        for n in (1, 2, 3)
    },
    "last_volume": ("LastVol", "MatchVol"),
    "active_buy_volume": ("ActiveBuyVol",),
    "active_sell_volume": ("ActiveSellVol",),
    "session": ("TradingSession",),
    "status": ("TradingStatus",),
}

INDEX_FIELDS = {
    "code": ("IndexId", "IndexCode", "Indexcode", "IndexID"),
    "name": ("IndexName",),
    "trading_date": ("TradingDate",),
    "time": ("Time",),
    "value": ("IndexValue",),
    "change": ("Change",),
    "change_pct": ("RatioChange",),
    "prior": ("PriorIndexValue",),
    "volume": ("TotalMatchVol", "TotalQtty"),
    "value_traded": ("TotalMatchVal", "TotalValue"),
    "advances": ("Advances",),
    "declines": ("Declines",),
    "unchanged": ("NoChanges", "Nochanges"),
    "ceilings": ("Ceilings", "Ceiling"),
    "floors": ("Floors", "Floor"),
    "session": ("TradingSession",),
}

_LOWERED = {}


def _lowered(table):
    names = _LOWERED.get(id(table))
    if names is None:
        names = _LOWERED[id(table)] = {field: tuple(n.lower() for n in spellings) for field, spellings in table.items()}
    return names


def lower_keys(raw):
    """The row with every key lower-cased (SSI names bind case-insensitively)."""
    return {str(key).lower(): value for key, value in raw.items()}


def pick(row, names):
    """First present, non-empty value among `names` in a lower-cased row."""
    for name in names:
        value = row.get(name)
        if value is not None and value != "":
            return value
    return None


def read(raw, table, fields=None):
    """Map a raw SSI row to our field names (all of `table`, or `fields` of it);
    values stay as SSI sent them."""
    row = lower_keys(raw)
    names = _lowered(table)
    return {field: pick(row, names[field]) for field in fields or table}


def to_decimal(value):
    """Exact Decimal from an SSI number (string, int or float); None if unknown."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    try:
        number = Decimal(str(value).strip().replace(",", ""))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def to_int(value):
    """Whole VND or shares, rounded half up ("663258204999.9850" -> 663258205000)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = to_decimal(value)
    if number is None:
        return None
    return int(number.to_integral_value(rounding=ROUND_HALF_UP))


def to_price(value):
    """A price in VND; SSI sends 0 where no price exists yet, which means unknown."""
    price = to_int(value)
    return price or None


def to_float(value, places=2):
    """Points or percent, rounded to `places` decimals."""
    if isinstance(value, float):
        return round(value, places)
    number = to_decimal(value)
    if number is None:
        return None
    return float(round(number, places))


def to_points(value):
    """A futures price in index points on its 0.1 tick; 0 means unknown."""
    points = to_float(value, 1)
    return points or None
