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
