"""The day's universe: every listed instrument and every index, with what a
board needs to know of them (exchange, type, lot, price steps, names, the
terms of a covered warrant or a future) and the baskets of the indices.

Loaded once per trading day (from SSI REST, or made by the simulator); the
last good universe is kept in shared state, so a worker that starts while
SSI's REST is failing still knows the market. Groups (`group()`) are what
the `board:` and `foreign:` topics show.
"""

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field

from stocktracker.lib import catalogue, keys
from stocktracker.lib.state import StateUnavailable, get_state

from . import market

log = logging.getLogger("apps.feed")

# The iBoard tabs: an exchange's board shows its shares and funds; ETFs,
# covered warrants and futures have boards of their own.
EXCHANGE_BOARD_TYPES = ("stock", "fund")


@dataclass(frozen=True)
class Instrument:
    symbol: str
    exchange: str  # HOSE | HNX | UPCOM | DER
    type: str  # one of catalogue.INSTRUMENT_TYPES
    name: str = ""  # as listed (Vietnamese)
    name_en: str = ""
    lot: int = 100
    # Price steps the exchange listed: ((lowest price of the band, tick), ...)
    # ascending; empty: the exchange's general rule (market.tick_size).
    ticks: tuple = ()
    listed_shares: int | None = None
    # Covered warrants: the underlying stock, exercise price (VND), how many
    # warrants give one share, and the last day it trades.
    underlying: str | None = None  # futures: the index (VN30) or bond it settles on
    exercise_price: int | None = None
    exercise_ratio: float | None = None
    maturity: dt.date | None = None
    # Futures: the contract's last trading day (its expiry).
    expiry: dt.date | None = None
    first_trading_date: dt.date | None = None


@dataclass(frozen=True)
class IndexInfo:
    code: str  # as SSI spells it: VNINDEX, VN30, HNXIndex, HNXUpcomIndex, VNFIN, ...
    name: str
    exchange: str  # HOSE | HNX | UPCOM
    kind: str = "main"  # main | sector | other
    members: tuple = ()  # symbols of its basket (empty when not published)


@dataclass
class Universe:
    day: dt.date
    instruments: dict = field(default_factory=dict)  # symbol -> Instrument
    indices: dict = field(default_factory=dict)  # code -> IndexInfo

    def __post_init__(self):
        self._groups = None

    def __contains__(self, symbol):
        return symbol in self.instruments

    def get(self, symbol):
        return self.instruments.get(symbol)

    def of_type(self, kind):
        return [s for s, i in self.instruments.items() if i.type == kind]

    def groups(self):
        """{group: (symbols, sorted)} of every board group."""
        if self._groups is None:
            groups = {}
            for name in ("HOSE", "HNX", "UPCOM"):
                groups[name] = tuple(
                    sorted(
                        s for s, i in self.instruments.items() if i.exchange == name and i.type in EXCHANGE_BOARD_TYPES
                    )
                )
            groups["ETF"] = tuple(sorted(self.of_type("etf")))
            groups["CW"] = tuple(sorted(self.of_type("cw")))
            groups["FU"] = tuple(sorted(s for s, i in self.instruments.items() if i.exchange == "DER"))
            for code in ("VN30", "VN100", "HNX30"):
                info = self.indices.get(code)
                groups[code] = tuple(sorted(s for s in (info.members if info else ()) if s in self.instruments))
            self._groups = groups
        return self._groups

    def group(self, name):
        """Symbols of board or foreign group `name` (catalogue.BOARD_GROUPS, FOREIGN_GROUPS)."""
        return self.groups().get(name, ())

    def memberships(self):
        """{symbol: (group, ...)}: every board group a symbol is in."""
        found = {}
        for name, symbols in self.groups().items():
            for symbol in symbols:
                found.setdefault(symbol, []).append(name)
        return {symbol: tuple(names) for symbol, names in found.items()}

    def futures(self, underlying="VN30"):
        """The listed futures on `underlying`, nearest expiry first."""
        contracts = [i for i in self.instruments.values() if i.type == "futures" and i.underlying == underlying]
        return sorted(contracts, key=lambda i: (i.expiry or dt.date.max, i.symbol))

    def counts(self):
        """{(exchange, type): count}: the universe's size, for logs and reports."""
        counts = {}
        for instrument in self.instruments.values():
            key = (instrument.exchange, instrument.type)
            counts[key] = counts.get(key, 0) + 1
        return counts

    # --- kept as JSON (the last good universe, in shared state) -------------------------

    def to_json(self):
        def plain(value):
            return value.isoformat() if isinstance(value, dt.date) else value

        return json.dumps(
            {
                "day": self.day.isoformat(),
                "instruments": [{k: plain(v) for k, v in asdict(i).items()} for i in self.instruments.values()],
                "indices": [{**asdict(i), "members": list(i.members)} for i in self.indices.values()],
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text):
        raw = json.loads(text)
        dates = ("maturity", "expiry", "first_trading_date")
        instruments = {}
        for item in raw["instruments"]:
            item = {k: (dt.date.fromisoformat(v) if k in dates and v else v) for k, v in item.items()}
            item["ticks"] = tuple(tuple(step) for step in item.get("ticks") or ())
            instruments[item["symbol"]] = Instrument(**item)
        indices = {i["code"]: IndexInfo(**{**i, "members": tuple(i["members"])}) for i in raw["indices"]}
        return cls(dt.date.fromisoformat(raw["day"]), instruments, indices)


async def keep(universe):
    """Remember `universe` as the last good one (shared state)."""
    await get_state().value_set(keys.UNIVERSE, universe.to_json())


async def last_good():
    """The last good universe, or None."""
    try:
        text = await get_state().value_get(keys.UNIVERSE)
    except StateUnavailable:
        return None
    if not text:
        return None
    try:
        return Universe.from_json(text)
    except (ValueError, KeyError, TypeError):
        log.warning("the stored universe could not be read; ignoring it", exc_info=True)
        return None


def check(universe):
    """Problems that make a universe unusable (an empty exchange, a type we do
    not know); [] when it is fine."""
    problems = []
    for instrument in universe.instruments.values():
        if instrument.type not in catalogue.INSTRUMENT_TYPES:
            problems.append(f"{instrument.symbol}: unknown type {instrument.type!r}")
        if instrument.exchange not in catalogue.EXCHANGES:
            problems.append(f"{instrument.symbol}: unknown exchange {instrument.exchange!r}")
    for exchange in ("HOSE", "HNX", "UPCOM"):
        if not universe.group(exchange):
            problems.append(f"no instrument on {exchange}")
    return problems[:20]


# --- the day's universe from SSI REST -----------------------------------------------

MARKETS = ("HOSE", "HNX", "UPCOM", "DER")
INDEX_EXCHANGES = ("HOSE", "HNX")
# SecuritiesDetails SecType (the spec's table and the 2023 sample's "S").
SEC_TYPES = {"ST": "stock", "S": "stock", "EF": "etf", "E": "etf", "CW": "cw", "MF": "fund", "OF": "fund"}
NOT_ON_BOARDS = {"BO"}  # bonds trade on HNX's bond market, not on these boards
# Futures by the KRX code's product (41 + product + year + month + 000).
FUTURES_PRODUCTS = {"I1": "VN30", "I2": "VN100", "B5": "GB05", "BA": "GB10"}
MAIN_INDICES = {
    "VNINDEX", "VN30", "VN100", "VNMID", "VNSML", "VNALL", "VNX50", "VNXALL", "HNXINDEX", "HNX30", "HNXUPCOMINDEX",
}  # fmt: skip
SECTOR_INDICES = {"VNCOND", "VNCONS", "VNENE", "VNFIN", "VNHEAL", "VNIND", "VNIT", "VNMAT", "VNREAL", "VNUTI"}
INDEX_TYPES = {"main": "main", "industry": "sector", "sector": "sector"}
SHRINK_LIMIT = 0.5  # a universe with fewer instruments than this share of the last good one is refused


class UniverseError(Exception):
    """SSI's answers do not make a usable universe (the last good one stays)."""


async def load_universe(client, day, *, page_size=1000, previous=None):
    """The universe of trading day `day` from SSI REST (an `SSIClient`):
    Securities and SecuritiesDetails per market, IndexList per exchange and
    IndexComponents per index. About 8 + the number of indices requests;
    SSIError when SSI fails, UniverseError when the answer is not usable
    (`previous`, the last good universe, judges a shrunken one)."""
    instruments = {}
    for market_code in MARKETS:
        listed = {_symbol(row): row for row in await client.securities(market_code, page_size=page_size)}
        details = await client.securities_details(market_code, page_size=page_size)
        detailed = {_symbol(item): item for item in details}
        for symbol in dict.fromkeys([*listed, *detailed]):
            if not symbol:
                continue
            instrument = instrument_from(market_code, listed.get(symbol), detailed.get(symbol))
            if instrument is not None:
                instruments[symbol] = instrument
    indices = {}
    for exchange in INDEX_EXCHANGES:
        for row in await client.index_list(exchange, page_size=page_size):
            info = index_from(row, exchange)
            if info is not None:
                indices.setdefault(info.code, info)
    for code, info in list(indices.items()):
        members = await client.index_components(code, page_size=page_size)
        indices[code] = IndexInfo(info.code, info.name, info.exchange, info.kind, tuple(members))
    universe = Universe(day, instruments, indices)
    problems = check(universe)
    if previous is not None and len(instruments) < SHRINK_LIMIT * len(previous.instruments):
        problems.append(f"{len(instruments)} instruments, the last good universe had {len(previous.instruments)}")
    if problems:
        raise UniverseError("; ".join(problems))
    return universe


def _symbol(row):
    fields = {str(k).lower(): v for k, v in row.items()}
    return str(fields.get("symbol") or "").strip().upper()


def _int(value):
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return int(number) if number == number else None


def _date(value):
    text = str(value or "").strip()[:10]
    try:
        return dt.datetime.strptime(text, "%d/%m/%Y").date()  # noqa: DTZ007 - a date, no time
    except ValueError:
        return None


def _ratio(value):
    """An exercise ratio: "5:1" (5 warrants for one share), "5", "5.0000:1"."""
    text = str(value or "").strip()
    try:
        if ":" in text:
            warrants, shares = text.split(":", 1)
            ratio = float(warrants) / float(shares)
        else:
            ratio = float(text)
    except (ValueError, ZeroDivisionError):
        return None
    return ratio if ratio > 0 else None


def _futures_code(symbol):
    """(product, year, month) of a KRX futures code (41I1G4000) or a legacy
    VN30F2604; None for anything else."""
    if len(symbol) == 9 and symbol.startswith("41") and symbol.endswith("000"):
        parsed = market.parse_futures_code("41I1" + symbol[4:])
        return (symbol[2:4], *parsed) if parsed else None
    parsed = market.parse_futures_code(symbol)
    return ("I1", *parsed) if parsed else None


def _guess_type(symbol, exchange):
    """A type when SecuritiesDetails gave none (HOSE's naming conventions)."""
    if exchange == "DER":
        return "futures"
    if len(symbol) == 8 and symbol[0] == "C" and symbol[1:4].isalpha() and symbol[4:].isdigit():
        return "cw"
    if symbol.startswith(("E1VF", "FUE")):
        return "etf"
    if symbol.startswith("FUC"):
        return "fund"
    return "stock"


def instrument_from(exchange, listed, detail):
    """An Instrument from a Securities row and/or a SecuritiesDetails item; None
    when it is not something the boards show (a bond)."""
    fields = {str(k).lower(): v for k, v in {**(listed or {}), **(detail or {})}.items()}
    symbol = str(fields.get("symbol") or "").strip().upper()
    sec_type = str(fields.get("sectype") or "").strip().upper()
    if not symbol or sec_type in NOT_ON_BOARDS or str(fields.get("marketid") or "").upper() == "HNXBOND":
        return None
    name = str(fields.get("symbolname") or fields.get("stockname") or "").strip()
    name_en = str(fields.get("symbolengname") or fields.get("stockenname") or "").strip()
    ticks = []
    for n in range(1, 5):
        price, tick = _number(fields.get(f"tickprice{n}")), _number(fields.get(f"tickincrement{n}"))
        if price is not None and tick:
            ticks.append((price, tick))
    lot = _int(fields.get("lotsize"))
    common = {
        "symbol": symbol,
        "exchange": exchange,
        "name": name,
        "name_en": name_en,
        "lot": lot if lot and lot > 0 else (1 if exchange == "DER" else 100),
        "ticks": tuple(sorted(ticks)),
        "first_trading_date": _date(fields.get("firsttradingdate")),
    }
    underlying = str(fields.get("underlying") or "").strip().upper() or None
    if exchange == "DER":
        code = _futures_code(symbol)
        underlying = underlying or (FUTURES_PRODUCTS.get(code[0]) if code else None)
        bond = (code is not None and code[0].startswith("B")) or (underlying or "").startswith("GB")
        expiry = _date(fields.get("lasttradingdate"))
        if expiry is None and code is not None and not bond:
            expiry = market.futures_expiry(code[1], code[2])
        kind = "bond_futures" if bond else "futures"
        return Instrument(**common, type=kind, underlying=underlying, expiry=expiry)
    kind = SEC_TYPES.get(sec_type) or _guess_type(symbol, exchange)
    shares = _int(fields.get("listedshare"))
    if kind == "cw":
        exercise = _int(fields.get("exerciseprice"))
        return Instrument(
            **common,
            type=kind,
            listed_shares=shares or None,
            underlying=underlying,
            exercise_price=exercise or None,
            exercise_ratio=_ratio(fields.get("excerciseratio") or fields.get("exerciseratio")),
            maturity=_date(fields.get("maturitydate")) or _date(fields.get("lasttradingdate")),
        )
    return Instrument(**common, type=kind, listed_shares=shares or None)


def index_from(row, exchange):
    """An IndexInfo (without members) from an IndexList row."""
    fields = {str(k).lower(): v for k, v in row.items()}
    code = str(fields.get("indexcode") or fields.get("indexid") or "").strip()
    if not code:
        return None
    declared = str(fields.get("indextype") or fields.get("typeindex") or "").strip().lower()
    kind = INDEX_TYPES.get(declared)
    if kind is None:
        upper = code.upper()
        kind = "main" if upper in MAIN_INDICES else "sector" if upper in SECTOR_INDICES else "other"
    listed_on = str(fields.get("exchange") or exchange).strip().upper()
    exchange = "UPCOM" if "UPCOM" in code.upper() else listed_on if listed_on in ("HOSE", "HNX") else exchange
    name = str(fields.get("indexname") or code).strip()
    return IndexInfo(code, name, exchange, kind)


def _number(value):
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    if number != number:
        return None
    return int(number) if number.is_integer() else number
