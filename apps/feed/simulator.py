"""A believable trading day for VN30, its front-month future and five indices.

Deterministic: a day's path depends only on SIMULATOR_SEED and the trading
date, and the state at a moment does not depend on how often it is read (the
day advances in fixed one-second steps from the morning). Each symbol has
market events at random seconds, as the hub delivers them: a trade (X-TRADE:
price, LastVol and the aggressor's side BU/SD; auction matches have no side)
or a change of its three-level order book (X-QUOTE). Output rows are
SSI-shaped: DailyStockPrice and DailyIndex keys plus the stream's (BidPrice1..3,
LastVol, TotalRoom, TradingSession...), so the payload builders read them as
they read SSI.

Two clocks: `wall` (Asia/Ho_Chi_Minh now; a closed market is closed) and
`demo` (plays trading days on a loop, SIMULATOR_SPEED simulated seconds per
real second, each loop the next trading day). Both are functions of the wall
clock, so every worker process computes the same simulated moment.
"""

import datetime as dt
import math
import random
import time

from django.conf import settings

from stocktracker.lib import keys
from stocktracker.lib.state import get_state

from . import market
from .payloads import FeedData, Futures

STEP_S = 1
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
# Each demo loop plays 08:44 -> 11:31 and 12:59 -> 15:01: a minute of each quiet
# stretch (pre-open, lunch, close) so the phases show, then trading again.
DEMO_SEGMENTS = ((8 * 3600 + 44 * 60, 11 * 3600 + 31 * 60), (12 * 3600 + 59 * 60, 15 * 3600 + 60))
DEMO_DAY_S = sum(end - start for start, end in DEMO_SEGMENTS)
DEMO_START_S = 36 * 60  # the first loop starts at 09:20, in continuous trading; later loops pass the ATO
BOOK_LEVELS = 3  # HOSE publishes three levels; the board shows three everywhere
TRADE_SHARE = 0.6  # share of a symbol's events that are trades (the rest move its book)


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


_SQRT = [math.sqrt(max(1, n)) for n in range(3601)]  # of the seconds since an event (capped: a lunch)


def _up(price, board):
    """The next price above `price` on `board`'s tick ladder (DER: tenths of a point)."""
    return price + (1 if board == "DER" else market.tick_size(price, board))


def _down(price, board):
    return price - (1 if board == "DER" else market.tick_size(price - 1, board))


class _Book:
    """Three levels a side around the best bid, with volumes that trades eat
    and quote events replace; levels beyond the band do not exist."""

    __slots__ = ("asks", "bids", "board", "ceiling", "depth", "floor", "lot")

    def __init__(self, board, ceiling, floor, depth, lot):
        self.board, self.ceiling, self.floor, self.depth, self.lot = board, ceiling, floor, depth, lot
        self.bids = []  # [[price, volume], ...], best first
        self.asks = []

    def _volume(self, rng):
        return max(1, int(rng.expovariate(1 / self.depth))) * self.lot

    def follow(self, rng, best_bid):
        """Re-centre on `best_bid`: levels at prices that stay keep their volume."""
        if self.bids and self.bids[0][0] == best_bid:
            return
        old_bids = {p: v for p, v in self.bids}
        old_asks = {p: v for p, v in self.asks}
        bids, price = [], best_bid
        while len(bids) < BOOK_LEVELS and price >= self.floor:
            bids.append([price, old_bids.get(price) or self._volume(rng)])
            price = _down(price, self.board)
        asks, price = [], _up(best_bid, self.board)
        while len(asks) < BOOK_LEVELS and price <= self.ceiling:
            asks.append([price, old_asks.get(price) or self._volume(rng)])
            price = _up(price, self.board)
        self.bids, self.asks = bids, asks

    def hit(self, rng, side, volume):
        """A trade of `volume` against the best level of `side` (BU eats the best ask)."""
        levels = self.asks if side == "BU" else self.bids
        if levels:
            left = levels[0][1] - volume
            levels[0][1] = left if left > 0 else self._volume(rng)  # emptied: new orders arrive

    def requote(self, rng):
        levels = self.bids + self.asks
        if levels:
            levels[int(rng.random() * len(levels))][1] = self._volume(rng)

    def row(self, scale=1):
        out = {}
        for side, levels in (("Bid", self.bids), ("Ask", self.asks)):
            for n in range(BOOK_LEVELS):
                price, volume = levels[n] if n < len(levels) else (None, None)
                out[f"{side}Price{n + 1}"] = price if price is None or scale == 1 else round(price / scale, 1)
                out[f"{side}Vol{n + 1}"] = volume
        return out


class _Stock:
    __slots__ = (
        "active_buy",
        "active_sell",
        "beta",
        "board",
        "book",
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
        "last_volume",
        "lots",
        "low",
        "m_seen",
        "next_t",
        "open",
        "opened",
        "rate",
        "ref",
        "room",
        "room_total",
        "sigma",
        "symbol",
        "t_seen",
        "value",
        "volume",
        "x",
        "x_hi",
        "x_lo",
    )  # fmt: skip

    def __init__(self, symbol, rng, shown=True):
        board, price, cap, room_pct, adv = _listing(symbol)
        self.symbol, self.board = symbol, board
        self.ref = market.round_to_tick(price * math.exp(rng.gauss(0, 0.05)), board)
        self.ceiling, self.floor = market.bands(self.ref, board)
        self.x = 0.0
        self.x_lo = math.log(self.floor / self.ref) - 0.003
        self.x_hi = math.log(self.ceiling / self.ref) + 0.003
        self.beta = rng.uniform(0.6, 1.4)
        self.sigma = rng.uniform(0.00011, 0.00019)  # per second: roughly 1.5-2.5 % a day
        # Market events per second; the symbols only the indices and the foreign
        # totals read move less often (cheaper, and nobody watches them tick).
        self.rate = min(0.3, 0.03 + adv / 6000) if shown else 0.02 + adv / 30000
        trades_a_day = 4.5 * 3600 * self.rate * TRADE_SHARE
        self.lots = max(1.0, adv * 1e9 / self.ref / 100 / trades_a_day * rng.uniform(0.6, 1.4))
        self.foreign_share = rng.uniform(0.08, 0.3)
        self.foreign_buy_bias = min(0.85, max(0.15, rng.gauss(0.5, 0.12)))
        shares = cap * 1e9 / price
        self.room = int(shares * room_pct)
        self.room_total = int(shares * (0.49 if room_pct > 0.3 else 0.3))  # the foreign ownership limit
        self.open = self.high = self.low = self.last = self.last_volume = None
        self.volume = self.value = self.fbv = self.fsv = self.fbval = self.fsval = 0
        self.active_buy = self.active_sell = 0
        self.opened = self.closed = False
        self.book = _Book(board, self.ceiling, self.floor, self.lots * 3, 100)
        self.next_t = DAY_OPEN_S + int(rng.expovariate(self.rate))
        self.t_seen, self.m_seen = DAY_OPEN_S, 0.0

    def price(self):
        raw = self.ref * math.exp(self.x)
        return min(self.ceiling, max(self.floor, market.round_to_tick(raw, self.board)))

    def move(self, rng, t, m):
        """Catch the price up with the market since this symbol's last event."""
        x = self.x + self.beta * (m - self.m_seen) + rng.gauss(0, self.sigma * _SQRT[min(t - self.t_seen, 3600)])
        self.x = min(self.x_hi, max(self.x_lo, x))
        self.t_seen, self.m_seen = t, m
        self.book.follow(rng, self.price())

    def event(self, rng, t, m, continuous):
        up = self.x
        self.move(rng, t, m)
        if continuous and rng.random() < TRADE_SHARE:
            rising = self.x > up
            side = "BU" if rng.random() < (0.65 if rising else 0.35) else "SD"
            best = self.book.asks if side == "BU" else self.book.bids
            price = best[0][0] if best else self.book.bids[0][0] if side == "BU" else self.book.asks[0][0]
            lots = max(1, int(rng.expovariate(1 / self.lots)))
            self.book.hit(rng, side, lots * 100)
            self.trade(rng, lots, price, side)
        else:
            self.book.requote(rng)
        self.next_t = t + 1 + int(rng.expovariate(self.rate))

    def trade(self, rng, lots, price=None, side=None):
        """One match; `side` None for an auction match (no aggressor)."""
        price = self.price() if price is None else price
        volume = lots * 100
        self.last, self.last_volume = price, volume
        if self.open is None:
            self.open = self.high = self.low = price
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.volume += volume
        self.value += volume * price
        if side == "BU":
            self.active_buy += volume
        elif side == "SD":
            self.active_sell += volume
        foreign = volume * self.foreign_share * rng.random() * 2
        buy = min(int(foreign * self.foreign_buy_bias) // 100 * 100, self.room // 100 * 100, volume)
        sell = min(int(foreign * (1 - self.foreign_buy_bias)) // 100 * 100, volume)
        self.room += sell - buy
        self.fbv += buy
        self.fsv += sell
        self.fbval += buy * price
        self.fsval += sell * price

    def row(self, day, session):
        avg = round(self.value / self.volume) if self.volume else None
        change = self.last - self.ref if self.last is not None else None
        return {
            "TradingDate": day,
            "Symbol": self.symbol,
            "Market": self.board,
            "Exchange": self.board,
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
            "TotalDealVol": None,  # put-through is not simulated: unknown, not zero
            "TotalDealVal": None,
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
            # Stream fields (X-QUOTE, X-TRADE, R, F)
            **self.book.row(),
            "LastVol": self.last_volume,
            "ActiveBuyVol": self.active_buy,
            "ActiveSellVol": self.active_sell,
            "TotalRoom": self.room_total,
            "TradingSession": session,
            "TradingStatus": "N",
        }


class _Future:
    """The front-month contract, priced in tenths of a point off VN30 plus a basis."""

    __slots__ = (
        "active_buy", "active_sell", "basis", "book", "ceiling", "closed", "floor", "high", "last",
        "last_volume", "low", "next_t", "open", "ref", "value", "volume",
    )  # fmt: skip

    RATE = 0.9  # events per second: the most traded contract on the market

    def __init__(self, rng, ref, basis):
        self.ref = round(ref * 10)
        ceiling, floor = market.futures_bands(ref)
        self.ceiling, self.floor = round(ceiling * 10), round(floor * 10)
        self.basis = basis
        self.open = self.high = self.low = self.last = self.last_volume = None
        self.volume = self.value = self.active_buy = self.active_sell = 0
        self.closed = False
        self.book = _Book("DER", self.ceiling, self.floor, 25, 1)
        self.next_t = DAY_OPEN_S

    def price(self, vn30):
        return min(self.ceiling, max(self.floor, round((vn30 + self.basis) * 10)))

    def event(self, rng, t, vn30, continuous):
        self.book.follow(rng, self.price(vn30))
        if continuous and rng.random() < TRADE_SHARE:
            side = "BU" if rng.random() < 0.5 else "SD"
            best = self.book.asks if side == "BU" else self.book.bids
            price = best[0][0] if best else self.book.bids[0][0] if side == "BU" else self.book.asks[0][0]
            contracts = max(1, int(rng.expovariate(1 / 15)))
            self.book.hit(rng, side, contracts)
            self.trade(contracts, price, side)
        else:
            self.book.requote(rng)
        self.next_t = t + 1 + int(rng.expovariate(self.RATE))

    def trade(self, contracts, price, side=None):
        self.last, self.last_volume = price, contracts
        self.open = price if self.open is None else self.open
        self.high = price if self.high is None else max(self.high, price)
        self.low = price if self.low is None else min(self.low, price)
        self.volume += contracts
        self.value += contracts * price * 10_000  # tenths of a point x 100,000 VND a point
        if side == "BU":
            self.active_buy += contracts
        elif side == "SD":
            self.active_sell += contracts

    def row(self, day, symbol, session):
        points = {name: (None if v is None else v / 10) for name, v in
                  (("ref", self.ref), ("ceiling", self.ceiling), ("floor", self.floor), ("open", self.open),
                   ("high", self.high), ("low", self.low), ("last", self.last))}  # fmt: skip
        return {
            "TradingDate": day,
            "Symbol": symbol,
            "Market": "DER",
            "Exchange": "DER",
            "RefPrice": points["ref"],
            "CeilingPrice": points["ceiling"],
            "FloorPrice": points["floor"],
            "OpenPrice": points["open"],
            "HighestPrice": points["high"],
            "LowestPrice": points["low"],
            "ClosePrice": points["last"],
            "PriceChange": round(points["last"] - points["ref"], 1) if self.last is not None else None,
            "TotalMatchVol": self.volume,
            "TotalMatchVal": self.value,
            **self.book.row(scale=10),
            "LastVol": self.last_volume,
            "ActiveBuyVol": self.active_buy,
            "ActiveSellVol": self.active_sell,
            "TradingSession": session,
            "TradingStatus": "N",
        }


_BOARDS = ("HOSE", "HNX", "UPCOM", "DER")


class SimDay:
    """One simulated trading day, advanced in fixed one-second steps."""

    def __init__(self, seed, date, extra=()):
        self.date = date
        self.rng = rng = random.Random(f"stocktracker:{seed}:{date.isoformat()}")
        symbols = list(UNIVERSE) + [s for s in extra if s not in UNIVERSE]
        shown = set(VN30_BASKET) | set(extra)
        self.stocks = {symbol: _Stock(symbol, rng, symbol in shown) for symbol in symbols}
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
        fut_ref = round(self.prior["VN30"] + rng.gauss(0, 4), 1)
        self.fut = _Future(rng, fut_ref, fut_ref - self.prior["VN30"])
        self.m = 0.0  # market factor (log-return shared by every stock)
        self.t = DAY_OPEN_S - STEP_S  # seconds after midnight already simulated
        self.phases = dict.fromkeys(_BOARDS, "pre_open")
        self.points = {code: [] for code in self.members}

    # --- stepping -----------------------------------------------------------------

    def advance_to(self, seconds):
        seconds = min(seconds, DAY_CLOSE_S)
        phase_of_day = market.phase_of_day
        while self.t + STEP_S <= seconds:
            self.t = t = self.t + STEP_S
            phases = {board: phase_of_day(board, t) for board in _BOARDS}
            if phases != self.phases:
                self._transitions(t, self.phases, phases)
                self.phases = phases
            if phases["UPCOM"] == "lunch" or phases["DER"] == "pre_open":
                continue  # nothing trades or quotes
            self._step(t, phases)

    def _transitions(self, t, before, after):
        """The auctions match when their session ends: HOSE's ATO at 09:15, the
        ATCs at 14:45 (UPCOM has none; HNX goes on to its PLO), the future's ATO at 09:00."""
        rng = self.rng
        for stock in self.stocks.values():
            was, now = before[stock.board], after[stock.board]
            if was == now:
                continue
            if was == "ato" and now == "continuous":
                stock.move(rng, t, self.m)
                stock.opened = True
                stock.trade(rng, max(1, int(stock.lots * rng.uniform(8, 20))))
            elif was == "atc" and now in ("closed", "plo") and stock.opened:
                stock.move(rng, t, self.m)
                stock.closed = True
                stock.trade(rng, max(1, int(stock.lots * rng.uniform(20, 50))))
        fut, was, now = self.fut, before["DER"], after["DER"]
        if was != now and (was, now) in (("ato", "continuous"), ("atc", "closed")):
            vn30 = self.index_value("VN30")
            fut.book.follow(rng, fut.price(vn30))
            fut.trade(max(1, int(rng.expovariate(1 / 200))), fut.price(vn30))
            fut.closed = now == "closed"

    def _step(self, t, phases):
        rng = self.rng
        self.m += -0.0003 * self.m + rng.gauss(0, 0.00011)
        m = self.m
        for stock in self.stocks.values():
            if stock.next_t <= t:
                ph = phases[stock.board]
                if ph in ("ato", "continuous", "atc"):
                    stock.event(rng, t, m, ph == "continuous")
                else:
                    stock.next_t = t + 1 + int(rng.expovariate(stock.rate))
        fut = self.fut
        fut.basis += -0.001 * fut.basis + rng.gauss(0, 0.16)
        if fut.next_t <= t and phases["DER"] in ("ato", "continuous", "atc"):
            fut.event(rng, t, self.index_value("VN30"), phases["DER"] == "continuous")
        if t % POINT_EVERY_S == 0 and phases["HOSE"] in ("ato", "continuous", "atc", "closed"):
            ms = self._ms(t)
            for code in self.members:
                self.points[code].append([ms, self.index_value(code)])

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
            "TotalTrade": None,
            "TotalMatchVol": volume,
            "TotalMatchVal": value_traded,
            "TypeIndex": None,
            "IndexName": market.INDEX_NAMES[code],
            "Advances": advances,
            "NoChanges": unchanged,
            "Declines": declines,
            "Ceilings": ceilings,
            "Floors": floors,
            "TotalDealVol": None,
            "TotalDealVal": None,
            "TotalVol": volume,
            "TotalVal": value_traded,
            "TradingSession": session,
        }

    def futures_row(self, day, symbol=None, session=None):
        return self.fut.row(day, symbol or market.futures_code(self.fut_year, self.fut_month), session)


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
        sessions = {board: market.session_code(market.phase(local, board)) for board in _BOARDS}
        symbol, alias, expiry = market.futures_contract(date, self.futures_override)
        row = day.futures_row(text_date, symbol, sessions["DER"])
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
            stocks=[stock.row(text_date, sessions[stock.board]) for stock in day.stocks.values()],
            futures=contract,
            indices={code: day.index_row(code, text_date, sessions["HOSE"]) for code in day.members},
            points=points,
        )


class DemoClock:
    """Plays trading days on a loop, `speed` simulated seconds per real second.

    The simulated moment is a function of the wall clock alone, so every process
    (a leader and the standby that takes over from it) computes the same one and
    the data never goes back in time within an epoch. Each Asia/Ho_Chi_Minh
    calendar day, counted from its midnight, plays loops of DEMO_DAY_S
    simulated seconds, the first from 09:20 of that day's trading date (the last
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


async def demo_anchor():
    """The wall moment the demo day starts at: the first process to ask sets
    it; every other one reads the same."""
    raw = await get_state().first_value(keys.DEMO_ANCHOR, int(time.time() * 1000))
    return dt.datetime.fromtimestamp(int(raw) / 1000, dt.UTC)


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
            self.demo.anchor = await demo_anchor()
        return self.simulator.snapshot(self.now())

    def interval(self):
        """Seconds to the next cycle: the demo always moves; the wall clock
        slows down while the market is closed."""
        if self.clock == "demo" or market.is_active(self.now()):
            return settings.FEED_INTERVAL or 1.0
        return settings.FEED_IDLE_INTERVAL

    async def aclose(self):
        pass
