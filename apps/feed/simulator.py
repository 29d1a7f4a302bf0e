"""A believable trading day for VN30, its front-month future and five indices.

Deterministic: a day's path depends only on SIMULATOR_SEED and the trading
date, and the state at a moment does not depend on how often it is read (the
day advances in fixed 10-second steps from the morning). Output rows have the
shapes of SSI's DailyStockPrice and DailyIndex, so the payload builders and
the fake SSI server read them exactly as they read SSI.

Two clocks: `wall` (Asia/Ho_Chi_Minh now; a closed market is closed) and
`demo` (plays trading days on a loop, SIMULATOR_SPEED simulated seconds per
real second, each loop the next trading day). Both are functions of the wall
clock, so every worker process computes the same simulated moment.
"""

import datetime as dt
import math
import random

from django.conf import settings

from stocktracker.lib.state import get_state

from . import market
from .payloads import FeedData, Futures

STEP_S = 10
POINT_EVERY_S = 300  # sparkline resolution

# Basket effective 03/08/2026 (HOSE July-2026 review; see the SSI reference, section 6).
VN30_BASKET = (
    "ACB", "BID", "BSR", "CTG", "FPT", "GAS", "GVR", "HDB", "HPG", "LPB",
    "MBB", "MCH", "MSN", "MWG", "SAB", "SHB", "SSB", "SSI", "STB", "TCB",
    "TCX", "VCB", "VHM", "VIB", "VIC", "VJC", "VNM", "VPB", "VPL", "VRE",
)  # fmt: skip

# symbol: (board, typical price VND, market cap bn VND, foreign room as share of
# listed shares, average daily traded value bn VND)
UNIVERSE = {
    "ACB": ("HOSE", 24500, 110_000, 0.0, 700), "BID": ("HOSE", 38000, 260_000, 0.13, 500),
    "BSR": ("HOSE", 20000, 62_000, 0.46, 300), "CTG": ("HOSE", 40000, 215_000, 0.03, 600),
    "FPT": ("HOSE", 98500, 150_000, 0.0, 1200), "GAS": ("HOSE", 68000, 160_000, 0.45, 200),
    "GVR": ("HOSE", 30000, 120_000, 0.48, 150), "HDB": ("HOSE", 27000, 95_000, 0.05, 500),
    "HPG": ("HOSE", 26500, 200_000, 0.23, 1300), "LPB": ("HOSE", 33000, 100_000, 0.04, 300),
    "MBB": ("HOSE", 26000, 160_000, 0.0, 900), "MCH": ("HOSE", 120000, 90_000, 0.40, 150),
    "MSN": ("HOSE", 80000, 115_000, 0.21, 500), "MWG": ("HOSE", 68000, 100_000, 0.0, 800),
    "SAB": ("HOSE", 48000, 60_000, 0.37, 100), "SHB": ("HOSE", 13500, 55_000, 0.25, 900),
    "SSB": ("HOSE", 18500, 50_000, 0.05, 200), "SSI": ("HOSE", 30000, 60_000, 0.10, 900),
    "STB": ("HOSE", 45000, 85_000, 0.10, 900), "TCB": ("HOSE", 35000, 250_000, 0.0, 800),
    "TCX": ("HOSE", 45000, 100_000, 0.40, 400), "VCB": ("HOSE", 62000, 520_000, 0.06, 400),
    "VHM": ("HOSE", 95000, 390_000, 0.27, 1000), "VIB": ("HOSE", 18000, 55_000, 0.0, 300),
    "VIC": ("HOSE", 140000, 530_000, 0.37, 1200), "VJC": ("HOSE", 110000, 65_000, 0.31, 200),
    "VNM": ("HOSE", 61000, 128_000, 0.04, 400), "VPB": ("HOSE", 29000, 230_000, 0.0, 900),
    "VPL": ("HOSE", 80000, 150_000, 0.45, 250), "VRE": ("HOSE", 30000, 68_000, 0.22, 400),
    # The rest of the simulated HOSE board (foreign totals, VNINDEX breadth).
    "DGC": ("HOSE", 95000, 36_000, 0.27, 200), "PLX": ("HOSE", 36000, 46_000, 0.34, 150),
    "TPB": ("HOSE", 16000, 42_000, 0.0, 250), "BCM": ("HOSE", 65000, 67_000, 0.45, 50),
    "VIX": ("HOSE", 22000, 33_000, 0.40, 600), "DXG": ("HOSE", 18000, 18_000, 0.13, 500),
    "PDR": ("HOSE", 19000, 17_000, 0.43, 300), "NVL": ("HOSE", 13000, 25_000, 0.38, 400),
    "KBC": ("HOSE", 30000, 23_000, 0.25, 300), "DIG": ("HOSE", 20000, 12_000, 0.44, 400),
    "GEX": ("HOSE", 40000, 34_000, 0.40, 700), "VND": ("HOSE", 18000, 27_000, 0.30, 600),
    "HCM": ("HOSE", 28000, 20_000, 0.10, 300), "REE": ("HOSE", 68000, 32_000, 0.0, 100),
    "PNJ": ("HOSE", 85000, 29_000, 0.0, 150), "HSG": ("HOSE", 18000, 11_000, 0.35, 200),
    "DPM": ("HOSE", 36000, 14_000, 0.41, 150), "POW": ("HOSE", 13000, 30_000, 0.44, 250),
    "GMD": ("HOSE", 60000, 25_000, 0.0, 200), "VHC": ("HOSE", 60000, 13_000, 0.22, 120),
    "HQC": ("HOSE", 3500, 2_000, 0.49, 40), "ITA": ("HOSE", 6000, 5_600, 0.45, 60),
    # HNX
    "SHS": ("HNX", 17000, 14_000, 0.45, 400), "PVS": ("HNX", 34000, 16_000, 0.40, 250),
    "CEO": ("HNX", 15000, 8_000, 0.48, 150), "IDC": ("HNX", 50000, 16_000, 0.40, 120),
    "MBS": ("HNX", 30000, 17_000, 0.48, 150), "PVI": ("HNX", 55000, 13_000, 0.0, 10),
    "VCS": ("HNX", 60000, 9_600, 0.30, 10), "NTP": ("HNX", 60000, 8_500, 0.10, 10),
    "HUT": ("HNX", 18000, 16_000, 0.48, 80), "TNG": ("HNX", 21000, 2_500, 0.20, 30),
    # UPCOM
    "ACV": ("UPCOM", 115000, 250_000, 0.48, 40), "VEA": ("UPCOM", 40000, 53_000, 0.40, 20),
    "QNS": ("UPCOM", 48000, 17_000, 0.30, 15), "MML": ("UPCOM", 40000, 13_000, 0.30, 5),
    "VGI": ("UPCOM", 90000, 270_000, 0.45, 60), "FOX": ("UPCOM", 75000, 37_000, 0.30, 10),
    "OIL": ("UPCOM", 11500, 12_000, 0.48, 15), "ABB": ("UPCOM", 10500, 10_000, 0.01, 30),
}  # fmt: skip

INDEX_BASE = {"VNINDEX": 1862.40, "VN30": 2088.87, "HNXIndex": 268.51, "HNX30": 575.20, "HNXUpcomIndex": 112.35}
HNX30_MEMBERS = ("SHS", "PVS", "CEO", "IDC", "MBS", "VCS", "HUT", "TNG")
INDEX_CAP = {"VN30": 0.10, "HNX30": 0.15}  # free-float weight caps

DAY_OPEN_S = 8 * 3600 + 45 * 60  # derivatives ATO: the first moment anything moves
DAY_CLOSE_S = 15 * 3600
# Each demo loop plays 08:40 -> 11:35 and 12:55 -> 15:05 (most of lunch is skipped).
DEMO_SEGMENTS = ((8 * 3600 + 40 * 60, 11 * 3600 + 35 * 60), (12 * 3600 + 55 * 60, 15 * 3600 + 5 * 60))
DEMO_DAY_S = sum(end - start for start, end in DEMO_SEGMENTS)
DEMO_START_S = 30 * 60  # the first loop starts at 09:10, just before continuous trading


def _weights(symbols, cap=None):
    caps = {s: UNIVERSE[s][2] for s in symbols}
    total = sum(caps.values())
    weights = {s: c / total for s, c in caps.items()}
    if cap:
        for _ in range(10):  # cap and hand the excess to the others, until stable
            over = {s for s, w in weights.items() if w > cap}
            if not over:
                break
            excess = sum(weights[s] - cap for s in over)
            rest = sum(w for s, w in weights.items() if s not in over)
            weights = {s: cap if s in over else w + excess * w / rest for s, w in weights.items()}
    return weights


def _listing(symbol):
    """A listing for a symbol the universe lacks (EXTRA_SYMBOLS): HOSE, made up
    deterministically from the name."""
    if symbol in UNIVERSE:
        return UNIVERSE[symbol]
    rng = random.Random(f"listing:{symbol}")
    return ("HOSE", rng.choice((8000, 15000, 25000, 40000, 70000)), rng.randint(3, 40) * 1000, 0.3, 100)


class _Stock:
    __slots__ = (
        "beta",
        "board",
        "ceiling",
        "closed",
        "fbv",
        "fbval",
        "floor",
        "foreign_buy_bias",
        "foreign_share",
        "fsv",
        "fsval",
        "high",
        "last",
        "lots",
        "low",
        "open",
        "opened",
        "p_trade",
        "ref",
        "room",
        "room0",
        "sigma",
        "symbol",
        "value",
        "volume",
        "x",
        "x_hi",
        "x_lo",
    )  # fmt: skip

    def __init__(self, symbol, rng):
        board, price, cap, room_pct, adv = _listing(symbol)
        self.symbol, self.board = symbol, board
        self.ref = market.round_to_tick(price * math.exp(rng.gauss(0, 0.05)), board)
        self.ceiling, self.floor = market.bands(self.ref, board)
        self.x = 0.0
        self.x_lo = math.log(self.floor / self.ref) - 0.003
        self.x_hi = math.log(self.ceiling / self.ref) + 0.003
        self.beta = rng.uniform(0.6, 1.4)
        self.sigma = rng.uniform(0.00035, 0.0006)  # per 10-s step: roughly 1.5-2.5 % a day
        self.p_trade = 0.85 if adv >= 100 else 0.4
        continuous_steps = 4.5 * 3600 / STEP_S
        self.lots = max(1.0, adv * 1e9 / self.ref / 100 / (continuous_steps * self.p_trade) * rng.uniform(0.6, 1.4))
        self.foreign_share = rng.uniform(0.08, 0.3)
        self.foreign_buy_bias = min(0.85, max(0.15, rng.gauss(0.5, 0.12)))
        shares = cap * 1e9 / price
        self.room0 = self.room = int(shares * room_pct)
        self.open = self.high = self.low = self.last = None
        self.volume = self.value = self.fbv = self.fsv = self.fbval = self.fsval = 0
        self.opened = self.closed = False

    def price(self):
        raw = self.ref * math.exp(self.x)
        return min(self.ceiling, max(self.floor, market.round_to_tick(raw, self.board)))

    def trade(self, rng, lots):
        price = self.price()
        volume = lots * 100
        self.last = price
        if self.open is None:
            self.open = self.high = self.low = price
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.volume += volume
        self.value += volume * price
        foreign = volume * self.foreign_share * rng.random() * 2
        buy = min(int(foreign * self.foreign_buy_bias) // 100 * 100, self.room // 100 * 100, volume)
        sell = min(int(foreign * (1 - self.foreign_buy_bias)) // 100 * 100, volume)
        self.room += sell - buy
        self.fbv += buy
        self.fsv += sell
        self.fbval += buy * price
        self.fsval += sell * price

    def row(self, day):
        avg = round(self.value / self.volume) if self.volume else None
        change = self.last - self.ref if self.last is not None else None
        return {
            "TradingDate": day,
            "Symbol": self.symbol,
            "Market": self.board,
            "PriceChange": change,
            "PerPriceChange": round(change * 100 / self.ref, 2) if change is not None else None,
            "CeilingPrice": self.ceiling,
            "FloorPrice": self.floor,
            "RefPrice": self.ref,
            "OpenPrice": self.open,
            "HighestPrice": self.high,
            "LowestPrice": self.low,
            "ClosePrice": self.last,
            "AveragePrice": avg,
            "TotalMatchVol": self.volume,
            "TotalMatchVal": self.value,
            "TotalDealVol": 0,
            "TotalDealVal": 0,
            "ForeignBuyVolTotal": self.fbv,
            "ForeignSellVolTotal": self.fsv,
            "ForeignBuyValTotal": self.fbval,
            "ForeignSellValTotal": self.fsval,
            "ForeignCurrentRoom": self.room,
            "NetBuySellVol": self.fbv - self.fsv,
            "NetBuySellVal": self.fbval - self.fsval,
            "TotalTradedVol": self.volume,
            "TotalTradedValue": self.value,
            "Time": None,
        }


class SimDay:
    """One simulated trading day, advanced in fixed steps."""

    def __init__(self, seed, date, extra=()):
        self.date = date
        self.rng = rng = random.Random(f"stocktracker:{seed}:{date.isoformat()}")
        symbols = list(UNIVERSE) + [s for s in extra if s not in UNIVERSE]
        self.stocks = {symbol: _Stock(symbol, rng) for symbol in symbols}
        hose = [s for s in UNIVERSE if UNIVERSE[s][0] == "HOSE"]
        hnx = [s for s in UNIVERSE if UNIVERSE[s][0] == "HNX"]
        self.members = {
            "VNINDEX": hose,
            "VN30": list(VN30_BASKET),
            "HNXIndex": hnx,
            "HNX30": list(HNX30_MEMBERS),
            "HNXUpcomIndex": [s for s in UNIVERSE if UNIVERSE[s][0] == "UPCOM"],
        }
        self.weights = {code: _weights(members, INDEX_CAP.get(code)) for code, members in self.members.items()}
        self.prior = {code: round(base * math.exp(rng.gauss(0, 0.02)), 2) for code, base in INDEX_BASE.items()}
        # Futures: reference = previous settlement, a little off the VN30 close.
        self.fut_year, self.fut_month = market.front_month(date)
        self.fut_ref = round(self.prior["VN30"] + rng.gauss(0, 4), 1)
        self.fut_ceiling, self.fut_floor = market.futures_bands(self.fut_ref)
        self.basis = self.fut_ref - self.prior["VN30"]
        self.fut = {"open": None, "high": None, "low": None, "last": None, "volume": 0, "value": 0}
        self.fut_closed = False
        self.m = 0.0  # market factor (log-return shared by every stock)
        self.t = DAY_OPEN_S - STEP_S  # seconds after midnight already simulated
        self.points = {code: [] for code in self.members}

    # --- stepping -----------------------------------------------------------------

    def advance_to(self, seconds):
        seconds = min(seconds, DAY_CLOSE_S)
        while self.t + STEP_S <= seconds:
            self.t += STEP_S
            if market.phase_of_day("UPCOM", self.t) == "lunch" or market.phase_of_day("DER", self.t) == "pre_open":
                continue  # nothing trades
            self._step(self.t)

    def _step(self, t):
        rng = self.rng
        phases = {board: market.phase_of_day(board, t) for board in ("HOSE", "HNX", "UPCOM", "DER")}
        dm = -0.003 * self.m + rng.gauss(0, 0.00035)
        self.m += dm
        for stock in self.stocks.values():
            stock.x = min(stock.x_hi, max(stock.x_lo, stock.x + stock.beta * dm + rng.gauss(0, stock.sigma)))
            ph = phases[stock.board]
            if ph == "continuous":
                if not stock.opened and stock.board == "HOSE":
                    stock.opened = True  # the ATO auction: one large match at the open
                    stock.trade(rng, max(1, int(stock.lots * rng.uniform(8, 20))))
                elif rng.random() < stock.p_trade:
                    stock.opened = True
                    stock.trade(rng, max(1, int(rng.expovariate(1 / stock.lots))))
            elif ph == "closed" and not stock.closed and stock.opened:
                stock.closed = True
                if stock.board != "UPCOM":  # the ATC auction
                    stock.trade(rng, max(1, int(stock.lots * rng.uniform(20, 50))))
        self._step_futures(rng, phases["DER"], t)
        if t % POINT_EVERY_S == 0 and phases["HOSE"] in ("ato", "continuous", "atc", "closed") and t <= DAY_CLOSE_S:
            ms = self._ms(t)
            for code in self.members:
                self.points[code].append([ms, self.index_value(code)])

    def _step_futures(self, rng, ph, t):
        self.basis += -0.01 * self.basis + rng.gauss(0, 0.5)
        fut = self.fut
        if ph == "continuous" or (ph == "closed" and not self.fut_closed and fut["last"] is not None):
            if ph == "closed":
                self.fut_closed = True
            elif rng.random() > 0.9:
                return
            raw = self.index_value("VN30") + self.basis
            price = min(self.fut_ceiling, max(self.fut_floor, round(raw, 1)))
            contracts = max(1, int(rng.expovariate(1 / 60)))
            fut["last"] = price
            fut["open"] = price if fut["open"] is None else fut["open"]
            fut["high"] = price if fut["high"] is None else max(fut["high"], price)
            fut["low"] = price if fut["low"] is None else min(fut["low"], price)
            fut["volume"] += contracts
            fut["value"] += round(contracts * price * 100_000)

    # --- reading ------------------------------------------------------------------

    def _ms(self, seconds):
        midnight = dt.datetime.combine(self.date, dt.time(), tzinfo=market.VN)
        return int(midnight.timestamp() * 1000) + seconds * 1000

    def index_value(self, code):
        stocks = self.stocks
        ratio = 0.0
        for symbol, weight in self.weights[code].items():
            stock = stocks[symbol]
            ratio += weight * (stock.last if stock.last is not None else stock.ref) / stock.ref
        return round(self.prior[code] * ratio, 2)

    def index_row(self, code, day, session):
        value = self.index_value(code)
        change = round(value - self.prior[code], 2)
        members = [self.stocks[s] for s in self.members[code]]
        advances = declines = unchanged = ceilings = floors = 0
        for stock in members:
            last = stock.last
            if last is None or last == stock.ref:
                unchanged += 1
            elif last > stock.ref:
                advances += 1
            else:
                declines += 1
            ceilings += last == stock.ceiling
            floors += last == stock.floor
        volume = sum(stock.volume for stock in members)
        value_traded = sum(stock.value for stock in members)
        return {
            "IndexId": code,
            "IndexValue": value,
            "TradingDate": day,
            "Time": None,
            "Change": change,
            "RatioChange": round(change * 100 / self.prior[code], 2),
            "TotalTrade": 0,
            "TotalMatchVol": volume,
            "TotalMatchVal": value_traded,
            "TypeIndex": None,
            "IndexName": market.INDEX_NAMES[code],
            "Advances": advances,
            "NoChanges": unchanged,
            "Declines": declines,
            "Ceilings": ceilings,
            "Floors": floors,
            "TotalDealVol": 0,
            "TotalDealVal": 0,
            "TotalVol": volume,
            "TotalVal": value_traded,
            "TradingSession": session,
        }

    def futures_row(self, day):
        fut = self.fut
        last = fut["last"]
        return {
            "TradingDate": day,
            "Symbol": market.futures_code(self.fut_year, self.fut_month),
            "Market": "DER",
            "RefPrice": self.fut_ref,
            "CeilingPrice": self.fut_ceiling,
            "FloorPrice": self.fut_floor,
            "OpenPrice": fut["open"],
            "HighestPrice": fut["high"],
            "LowestPrice": fut["low"],
            "ClosePrice": last,
            "PriceChange": round(last - self.fut_ref, 1) if last is not None else None,
            "TotalMatchVol": fut["volume"],
            "TotalMatchVal": fut["value"],
        }


_SESSION_CODE = {"pre_open": None, "ato": "ATO", "continuous": "LO", "lunch": "BREAK", "atc": "ATC", "closed": "C"}


class Simulator:
    """Reads simulated days; keeps the current day so cycles only advance it."""

    def __init__(self, seed, extra=(), futures_override=""):
        self.seed = seed
        self.extra = tuple(extra)
        self.futures_override = futures_override
        self._day = None

    def day_at(self, date, seconds):
        day = self._day
        if day is None or day.date != date or day.t > seconds:
            day = self._day = SimDay(self.seed, date, self.extra)
        day.advance_to(seconds)
        return day

    def snapshot(self, moment, basket=VN30_BASKET):
        """FeedData for an aware `moment` (the latest trading day's close when closed)."""
        local = moment.astimezone(market.VN)
        date = market.trading_date(local)
        seconds = market.seconds_of_day(local) if date == local.date() else DAY_CLOSE_S
        day = self.day_at(date, seconds)
        phase = market.phase(local)
        text_date = date.strftime("%d/%m/%Y")
        session = _SESSION_CODE[phase]
        symbol, alias, expiry = market.futures_contract(date, self.futures_override)
        row = {**day.futures_row(text_date), "Symbol": symbol}
        contract = Futures(symbol=symbol, alias=alias, expiry=expiry, row=row)
        points = {}
        for code in day.members:
            points[code] = list(day.points[code])
            if phase not in ("pre_open",):
                now_ms = day._ms(min(seconds, DAY_CLOSE_S))
                if not points[code] or points[code][-1][0] < now_ms:
                    points[code].append([now_ms, day.index_value(code)])
        return FeedData(
            trading_date=date,
            phase=phase,
            source_ms=int(local.timestamp() * 1000),
            simulated=True,
            basket=list(basket),
            extra=list(self.extra),
            stocks=[stock.row(text_date) for stock in day.stocks.values()],
            futures=contract,
            indices={code: day.index_row(code, text_date, session) for code in day.members},
            points=points,
        )


class DemoClock:
    """Plays trading days on a loop, `speed` simulated seconds per real second.

    The simulated moment is a function of the wall clock alone, so every process
    (a leader and the standby that takes over from it) computes the same one and
    the data never goes back in time within an epoch. Each Asia/Ho_Chi_Minh
    calendar day, counted from its midnight, plays loops of DEMO_DAY_S
    simulated seconds, the first from 09:10 of that day's trading date (the last
    one before it on a weekend), each next loop the next trading day. At
    midnight the next calendar day starts over from its own trading date: a new
    epoch, as every loop is.
    """

    def __init__(self, speed, wall=market.vn_now, anchor=None):
        self.speed = speed
        self.wall = wall
        # The wall moment the first loop starts at, shared by every process
        # (see SimulatorSource.fetch); None: each calendar day's midnight.
        self.anchor = anchor
        self._loop = None  # (calendar day, loop number, its trading date): walked on, not from the start

    def now(self, wall=None):
        """The simulated moment at wall-clock moment `wall` (an aware datetime; default now)."""
        local = (wall or self.wall()).astimezone(market.VN)
        start = self.anchor or dt.datetime.combine(local.date(), dt.time(), tzinfo=market.VN)
        elapsed = max(0.0, (local - start).total_seconds()) * self.speed + DEMO_START_S
        loops, offset = divmod(elapsed, DEMO_DAY_S)
        day = self._day(start.astimezone(market.VN).date(), int(loops))
        for start, end in DEMO_SEGMENTS:
            if offset < end - start:
                break
            offset -= end - start
        midnight = dt.datetime.combine(day, dt.time(), tzinfo=market.VN)
        return midnight + dt.timedelta(seconds=start + offset)

    def _day(self, calendar_day, loops):
        """The trading date of loop `loops` of `calendar_day`."""
        cached = self._loop
        if cached and cached[0] == calendar_day and cached[1] <= loops:
            done, day = cached[1], cached[2]
        else:
            done, day = 0, market.trading_date(dt.datetime.combine(calendar_day, dt.time(12), tzinfo=market.VN))
        for _ in range(loops - done):
            day = market.next_trading_day(day)
        self._loop = (calendar_day, loops, day)
        return day


class SimulatorSource:
    """FEED_SOURCE=simulator: no network, every frame marked simulated."""

    name = "simulator"
    simulated = True

    def __init__(self, *, clock=None, seed=None, speed=None, extra=None, now=None, futures_override=None, wall=None):
        """`now` replaces the clock (the simulated moment itself); `wall` only
        the wall clock the chosen clock reads (tests)."""
        self.clock = clock or settings.SIMULATOR_CLOCK
        self.simulator = Simulator(
            settings.SIMULATOR_SEED if seed is None else seed,
            settings.EXTRA_SYMBOLS if extra is None else extra,
            settings.FUTURES_OVERRIDE if futures_override is None else futures_override,
        )
        self.demo = None
        if now is not None:
            self.now = now
        elif self.clock == "demo":
            self.demo = DemoClock(speed or settings.SIMULATOR_SPEED, wall=wall or market.vn_now)
            self.now = self.demo.now
        else:
            self.now = wall or market.vn_now
        # Tests that drive the wall clock keep the midnight anchor.
        self.shared_anchor = self.demo is not None and wall is None
        self.requests = 0  # upstream requests: none, ever

    async def fetch(self, needs):
        if self.shared_anchor and self.demo.anchor is None:
            # Every process plays the demo from the same moment: the first one
            # to ask sets it (for a day), so a standby that takes over shows the
            # same simulated time, and a fresh start opens just before 09:15.
            self.demo.anchor = await get_state().demo_anchor()
        return self.simulator.snapshot(self.now())

    def interval(self):
        """Seconds to the next cycle: the demo always moves; the wall clock
        slows down while the market is closed."""
        if self.clock == "demo" or market.is_active(self.now()):
            return settings.FEED_INTERVAL or 1.0
        return settings.FEED_IDLE_INTERVAL

    async def aclose(self):
        pass
