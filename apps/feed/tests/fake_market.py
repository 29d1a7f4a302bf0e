"""A synthetic whole market for the fake SSI server, in SSI's REST shapes.

Deterministic: the listing depends only on the seed. Sizes follow what SSI
lists (see the report of issue 21): HOSE 400 shares, 15 ETFs, 4 funds and
240 covered warrants; HNX 300 shares; UPCOM 850 shares; derivatives four
VN30 and four VN100 futures months and six government-bond futures. The
simulator's symbols (the VN30 basket, HNX30, its UPCOM names) are among them,
so a fake server serves both the v1 board and the whole market.
"""

import datetime as dt
import math
import random
import string

from apps.feed import market
from apps.feed.simulator import HNX30_MEMBERS, UNIVERSE, VN30_BASKET

SIZES = {("HOSE", "stock"): 400, ("HNX", "stock"): 300, ("UPCOM", "stock"): 850}
HOSE_ETFS = (
    "E1VFVN30", "FUEVFVND", "FUESSVFL", "FUEVN100", "FUEKIV30", "FUEDCMID", "FUEMAV30", "FUESSV30",
    "FUESSV50", "FUEIP100", "FUEKIVFS", "FUEMAVND", "FUEBFVND", "FUEKIVND", "FUEFCV50",
)  # fmt: skip
HOSE_FUNDS = ("FUCTVGF3", "FUCTVGF4", "FUCTVGF5", "FUCVREIT")
CW_COUNT = 240
CW_ISSUERS = ("ACBS", "HSC", "KIS", "MBS", "SSI", "VND", "VCSC")
# HOSE's and HNX's index lists (IndexList): code -> (name, type as SSI's MI sends it).
HOSE_INDICES = {
    "VNINDEX": ("VN-Index", "Main"), "VN30": ("VN30", "Main"), "VN100": ("VN100", "Main"),
    "VNMID": ("VNMidcap", "Main"), "VNSML": ("VNSmallcap", "Main"), "VNALL": ("VNAllshare", "Main"),
    "VNX50": ("VNX50", "Main"), "VNXALL": ("VNXAllshare", "Main"), "VNDIAMOND": ("VNDiamond", "Other"),
    "VNFINLEAD": ("VNFinLead", "Other"), "VNFINSELECT": ("VNFinSelect", "Other"),
    "VNCOND": ("VN Consumer Discretionary", "Industry"), "VNCONS": ("VN Consumer Staples", "Industry"),
    "VNENE": ("VN Energy", "Industry"), "VNFIN": ("VN Financials", "Industry"),
    "VNHEAL": ("VN Health Care", "Industry"), "VNIND": ("VN Industrials", "Industry"),
    "VNIT": ("VN Information Technology", "Industry"), "VNMAT": ("VN Materials", "Industry"),
    "VNREAL": ("VN Real Estate", "Industry"), "VNUTI": ("VN Utilities", "Industry"),
}  # fmt: skip
HNX_INDICES = {"HNXIndex": ("HNXIndex", "Main"), "HNX30": ("HNX30", "Main"), "HNXUpcomIndex": ("HNXUpcomIndex", "Main")}
SECTORS = [code for code, (_, kind) in HOSE_INDICES.items() if kind == "Industry"]


def _ssi_date(day):
    return day.strftime("%d/%m/%Y") if day else ""


class SyntheticMarket:
    """Every listed instrument and index, as SSI's reference endpoints list them."""

    def __init__(self, today, seed=21):
        self.today = today
        rng = random.Random(f"fake-market:{seed}")
        self.items = {}  # symbol -> SecuritiesDetails RepeatedInfo item (SSI's keys)
        self.markets = {}  # symbol -> HOSE | HNX | UPCOM | DER
        self.prices = {}  # symbol -> reference price (VND; points for futures)
        taken = set(UNIVERSE) | set(HOSE_ETFS) | set(HOSE_FUNDS)
        for exchange in ("HOSE", "HNX", "UPCOM"):
            known = [s for s, listing in UNIVERSE.items() if listing[0] == exchange]
            made = []
            while len(known) + len(made) < SIZES[(exchange, "stock")]:
                symbol = "".join(rng.choice(string.ascii_uppercase) for _ in range(3))
                if symbol not in taken:
                    taken.add(symbol)
                    made.append(symbol)
            for symbol in known + made:
                price = UNIVERSE[symbol][1] if symbol in UNIVERSE else _price(rng, exchange)
                self._add(symbol, exchange, "ST", price, name=f"CTCP {symbol}", lot=100)
        for symbol in HOSE_ETFS:
            self._add(symbol, "HOSE", "EF", _tick(rng.uniform(12_000, 30_000), 10), name=f"QUY ETF {symbol}")
        for symbol in HOSE_FUNDS:
            self._add(symbol, "HOSE", "MF", _tick(rng.uniform(9_000, 25_000), 10), name=f"QUY DAU TU {symbol}")
        underlyings = [s for s in VN30_BASKET] + ["DGC", "PLX", "VIX", "DXG", "PDR", "NVL", "KBC", "DIG", "GEX", "VND"]
        maturity = today + dt.timedelta(days=120)
        for n in range(CW_COUNT):
            under = underlyings[n % len(underlyings)]
            issuer = CW_ISSUERS[n // len(underlyings) % len(CW_ISSUERS)]
            symbol = f"C{under[:3]}{today.year % 100:02d}{n // len(underlyings) + 1:02d}"
            exercise = _tick(self.prices.get(under, 30_000) * rng.uniform(0.9, 1.3), 100)
            ratio = rng.choice((1, 2, 4, 5, 8, 10))
            self._add(
                symbol, "HOSE", "CW", _tick(rng.uniform(500, 5_000), 10), name=f"CW {under}/{issuer}", lot=100,
                Issuer=issuer, Underlying=under, ExercisePrice=str(exercise), ExerciseStyle="E",
                ExcerciseRatio=f"{ratio}:1", PutOrCall="C", MaturityDate=_ssi_date(maturity),
                LastTradingDate=_ssi_date(maturity - dt.timedelta(days=2)),
            )  # fmt: skip
        for prefix, underlying, base in (("41I1", "VN30", 2080.0), ("41I2", "VN100", 1980.0)):
            for year, month in _index_futures_months(today):
                symbol = f"{prefix}{market.futures_code(year, month)[4:]}"
                expiry = market.futures_expiry(year, month)
                self._add(
                    symbol, "DER", "FU", round(base + rng.uniform(-5, 5), 1), name=f"{underlying} futures",
                    lot=1, Underlying=underlying, LastTradingDate=_ssi_date(expiry), MaturityDate=_ssi_date(expiry),
                    ContractMultiplier="100000", SettlMethod="C",
                )  # fmt: skip
        for prefix, underlying in (("41B5", "GB05"), ("41BA", "GB10")):
            for year, month in _quarter_months(today, 3):
                symbol = f"{prefix}{market.futures_code(year, month)[4:]}"
                expiry = market.previous_trading_day(dt.date(year, month, 15) + dt.timedelta(days=1))
                self._add(
                    symbol, "DER", "FU", round(rng.uniform(98, 108), 1), name=f"{underlying} bond futures", lot=1,
                    Underlying=underlying, LastTradingDate=_ssi_date(expiry), MaturityDate=_ssi_date(expiry),
                    ContractMultiplier="10000", SettlMethod="P",
                )  # fmt: skip
        hose = [s for s, m in self.markets.items() if m == "HOSE" and self.items[s]["SecType"] == "ST"]
        hnx = [s for s, m in self.markets.items() if m == "HNX"]
        upcom = [s for s, m in self.markets.items() if m == "UPCOM"]
        self.indices = {}  # code -> (name, exchange as IndexList says, type, members)
        members = {
            "VNINDEX": hose,
            "VN30": list(VN30_BASKET),
            "VN100": list(VN30_BASKET) + [s for s in hose if s not in VN30_BASKET][:70],
            "VNMID": [s for s in hose if s not in VN30_BASKET][:70],
            "VNSML": [s for s in hose if s not in VN30_BASKET][70:220],
            "VNALL": hose[:250],
            "VNX50": list(VN30_BASKET) + hnx[:20],
            "VNXALL": hose[:250] + hnx[:50],
            "VNDIAMOND": ["ACB", "FPT", "MBB", "MWG", "TCB", "VPB", "VIB", "HDB", "STB", "REE"],
            "VNFINLEAD": ["ACB", "BID", "CTG", "HDB", "MBB", "SHB", "SSI", "STB", "TCB", "VCB", "VIB", "VPB"],
            "VNFINSELECT": ["ACB", "BID", "CTG", "HDB", "MBB", "SSI", "STB", "TCB", "VCB", "VPB"],
            "HNXIndex": hnx,
            "HNX30": list(HNX30_MEMBERS) + [s for s in hnx if s not in HNX30_MEMBERS][: 30 - len(HNX30_MEMBERS)],
            "HNXUpcomIndex": upcom,
        }
        others = [s for s in hose if s not in VN30_BASKET]
        for n, code in enumerate(SECTORS):
            members[code] = others[n * 25 : n * 25 + 25]
        for code, (name, kind) in {**HOSE_INDICES, **HNX_INDICES}.items():
            exchange = "HOSE" if code in HOSE_INDICES else "HNX"
            self.indices[code] = (name, exchange, kind, members[code])

    def _add(self, symbol, exchange, sec_type, price, *, name, lot=None, **extra):
        self.markets[symbol] = exchange
        self.prices[symbol] = price
        ticks = _ticks(exchange, sec_type)
        self.items[symbol] = {
            "Isin": None, "Symbol": symbol, "SymbolName": name, "SymbolEngName": name.title(), "SecType": sec_type,
            "MarketId": exchange, "Exchange": exchange, "Issuer": extra.pop("Issuer", None),
            "LotSize": str(lot or 100), "IssueDate": "", "MaturityDate": extra.pop("MaturityDate", ""),
            "FirstTradingDate": "", "LastTradingDate": extra.pop("LastTradingDate", ""),
            "ContractMultiplier": extra.pop("ContractMultiplier", "0"), "SettlMethod": extra.pop("SettlMethod", ""),
            "Underlying": extra.pop("Underlying", None), "PutOrCall": extra.pop("PutOrCall", None),
            "ExercisePrice": extra.pop("ExercisePrice", "0"), "ExerciseStyle": extra.pop("ExerciseStyle", ""),
            "ExcerciseRatio": extra.pop("ExcerciseRatio", "0"),
            "ListedShare": str(int(price * 37_000) if exchange != "DER" else 0), **ticks,
        }  # fmt: skip
        assert not extra, extra

    # --- the REST answers' rows --------------------------------------------------------

    def securities(self, exchange):
        """Securities rows (no exchange: every market)."""
        return [
            {"Market": self.markets[s], "Symbol": s, "StockName": i["SymbolName"], "StockEnName": i["SymbolEngName"]}
            for s, i in self.items.items()
            if not exchange or self.markets[s] == exchange
        ]

    def details(self, exchange, symbol=None):
        return [
            i
            for s, i in self.items.items()
            if (not exchange or self.markets[s] == exchange) and (not symbol or s == symbol)
        ]

    def index_list(self, exchange):
        return [
            {"IndexCode": code, "IndexName": name, "Exchange": ex}
            for code, (name, ex, _, _) in self.indices.items()
            if not exchange or ex == exchange
        ]

    def counts(self):
        """{(exchange, SSI SecType): count}."""
        out = {}
        for symbol, item in self.items.items():
            key = (self.markets[symbol], item["SecType"])
            out[key] = out.get(key, 0) + 1
        return out

    def daily_row(self, symbol, day):
        """A DailyStockPrice row for a symbol the simulator does not move (the day's
        close of a quiet synthetic name), numbers as SSI's strings."""
        rng = random.Random(f"{symbol}:{day.isoformat()}")
        exchange = self.markets[symbol]
        ref = self.prices[symbol]
        if exchange == "DER":
            ceiling, floor = market.futures_bands(ref)
            close = round(ref * (1 + rng.uniform(-0.01, 0.01)), 1)
        else:
            board = exchange if self.items[symbol]["SecType"] == "ST" else "HOSE"
            ceiling, floor = market.bands(int(ref), board)
            close = min(ceiling, max(floor, market.round_to_tick(int(ref * (1 + rng.uniform(-0.03, 0.03))), board)))
        volume = rng.randrange(0, 500_000, 100) if exchange != "DER" else rng.randrange(0, 20_000)
        buy, sell = volume // rng.randint(5, 40), volume // rng.randint(5, 40)
        value = lambda n: str(round(n * close * (100_000 if exchange == "DER" else 1)))  # noqa: E731
        return {
            "TradingDate": _ssi_date(day), "CeilingPrice": str(ceiling), "FloorPrice": str(floor), "RefPrice": str(ref),
            "OpenPrice": str(ref), "HighestPrice": str(max(ref, close)), "LowestPrice": str(min(ref, close)),
            "ClosePrice": str(close), "AveragePrice": str(close), "TotalMatchVol": str(volume),
            "TotalMatchVal": value(volume), "ForeignBuyVolTotal": str(buy), "ForeignSellVolTotal": str(sell),
            "ForeignBuyValTotal": value(buy), "ForeignSellValTotal": value(sell), "ForeignCurrentRoom": "1000000",
            "Symbol": symbol, "Time": None,
        }  # fmt: skip

    def index_row(self, code, day):
        """A DailyIndex row of an index the simulator does not move."""
        rng = random.Random(f"{code}:{day.isoformat()}")
        name, _, kind, members = self.indices[code]
        prior = round(rng.uniform(500, 2500), 2)
        value = round(prior * (1 + rng.uniform(-0.015, 0.015)), 2)
        advances = rng.randint(0, len(members))
        declines = rng.randint(0, len(members) - advances)
        return {
            "IndexId": code, "IndexValue": str(value), "TradingDate": _ssi_date(day), "Time": None,
            "Change": f"{value - prior:.2f}", "RatioChange": f"{(value - prior) * 100 / prior:.2f}",
            "TotalTrade": "0", "TotalMatchVol": str(rng.randrange(10**6, 10**8)),
            "TotalMatchVal": str(rng.randrange(10**10, 10**13)), "TypeIndex": kind, "IndexName": name,
            "Advances": str(advances), "NoChanges": str(len(members) - advances - declines),
            "Declines": str(declines), "Ceilings": "0", "Floors": "0", "TradingSession": None,
        }  # fmt: skip


def _price(rng, exchange):
    price = math.exp(rng.uniform(math.log(2_500), math.log(120_000)))
    return market.round_to_tick(int(price), "HOSE" if exchange == "HOSE" else exchange)


def _tick(price, tick):
    return max(tick, int(round(price / tick) * tick))


def _ticks(exchange, sec_type):
    if exchange == "DER":
        steps = [("0", "0.1")]
    elif exchange == "HOSE" and sec_type == "ST":
        steps = [("1", "10"), ("10000", "50"), ("50000", "100")]
    elif exchange == "HOSE":
        steps = [("1", "10")]
    else:
        steps = [("1", "100")]
    out = {}
    for n in range(1, 5):
        price, tick = steps[n - 1] if n <= len(steps) else (None, None)
        out[f"TickPrice{n}"], out[f"TickIncrement{n}"] = price, tick
    return out


def _index_futures_months(today):
    """The listed months of an index future: this month (until expiry), the
    next, and the next two quarter months."""
    year, month = market.front_month(today)
    months = [(year, month)]
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    months.append((year, month))
    while len(months) < 4:
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        if month % 3 == 0:
            months.append((year, month))
    return months


def _quarter_months(today, count):
    year, month = today.year, today.month
    out = []
    while len(out) < count:
        if month % 3 == 0 and dt.date(year, month, 15) >= today:
            out.append((year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out
