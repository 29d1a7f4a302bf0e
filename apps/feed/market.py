"""Vietnamese market rules: trading calendar, session phases, ticks, price bands
and VN30 futures codes (see docs/asyncapi.yaml and the SSI reference, section 6).

Pure functions of aware datetimes in Asia/Ho_Chi_Minh; no I/O. A trading day
is a weekday that is neither a Vietnamese public holiday (the `holidays`
package: Tết, Hùng Kings, 30/4, 1/5, 2/9 and the government's swapped days
off, which the exchanges also close for) nor in MARKET_CLOSED_DATES (closures
announced after the pinned package was released).
"""

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays
from django.conf import settings

VN = ZoneInfo("Asia/Ho_Chi_Minh")

PHASES = ("pre_open", "ato", "continuous", "lunch", "atc", "closed")
OPEN_PHASES = ("ato", "continuous", "lunch", "atc")

BAND = {"HOSE": 0.07, "HNX": 0.10, "UPCOM": 0.15, "DER": 0.07}

INDEX_NAMES = {
    "VNINDEX": "VN-Index",
    "VN30": "VN30",
    "HNXIndex": "HNX-Index",
    "HNX30": "HNX30",
    "HNXUpcomIndex": "UPCoM-Index",
}
INDEX_CODES = tuple(INDEX_NAMES)


def _t(hhmm):
    hours, minutes = hhmm.split(":")
    return dt.time(int(hours), int(minutes))


# (start, end, phase) per board, end exclusive; anything else is pre_open
# (before the first session) or closed (after the last).
SESSIONS = {
    "HOSE": [
        ("09:00", "09:15", "ato"),
        ("09:15", "11:30", "continuous"),
        ("11:30", "13:00", "lunch"),
        ("13:00", "14:30", "continuous"),
        ("14:30", "14:45", "atc"),
    ],
    "HNX": [
        ("09:00", "11:30", "continuous"),
        ("11:30", "13:00", "lunch"),
        ("13:00", "14:30", "continuous"),
        ("14:30", "14:45", "atc"),
    ],
    "UPCOM": [
        ("09:00", "11:30", "continuous"),
        ("11:30", "13:00", "lunch"),
        ("13:00", "15:00", "continuous"),
    ],
    "DER": [
        ("08:45", "09:00", "ato"),
        ("09:00", "11:30", "continuous"),
        ("11:30", "13:00", "lunch"),
        ("13:00", "14:30", "continuous"),
        ("14:30", "14:45", "atc"),
    ],
}
SESSIONS = {board: [(_t(a), _t(b), phase) for a, b, phase in rows] for board, rows in SESSIONS.items()}


def seconds_of_day(t):
    return t.hour * 3600 + t.minute * 60 + t.second


_SESSION_SECONDS = {
    board: [(seconds_of_day(a), seconds_of_day(b), phase) for a, b, phase in rows] for board, rows in SESSIONS.items()
}


def vn_now():
    return dt.datetime.now(VN)


@lru_cache(maxsize=64)
def _public_holidays(year):
    return frozenset(holidays.country_holidays("VN", years=year))


def is_holiday(day):
    """A weekday on which the exchanges are closed."""
    return day in _public_holidays(day.year) or day in settings.MARKET_CLOSED_DATES


def is_trading_day(day):
    return day.weekday() < 5 and not is_holiday(day)


def previous_trading_day(day):
    day -= dt.timedelta(days=1)
    while not is_trading_day(day):
        day -= dt.timedelta(days=1)
    return day


def next_trading_day(day):
    day += dt.timedelta(days=1)
    while not is_trading_day(day):
        day += dt.timedelta(days=1)
    return day


def trading_date(moment):
    """The trading date whose data is current at `moment`: today on a trading
    day, else the last trading day before it."""
    day = moment.astimezone(VN).date()
    return day if is_trading_day(day) else previous_trading_day(day)


def phase(moment, board="HOSE"):
    """Session phase of `board` at `moment` (see PHASES)."""
    local = moment.astimezone(VN)
    if not is_trading_day(local.date()):
        return "closed"
    return phase_of_day(board, seconds_of_day(local))


def phase_of_day(board, seconds):
    """Session phase of `board` at `seconds` after midnight of a trading day."""
    sessions = _SESSION_SECONDS[board]
    if seconds < sessions[0][0]:
        return "pre_open"
    for start, end, name in sessions:
        if start <= seconds < end:
            return name
    return "closed"


def is_open(moment):
    """Some board is in a session (the derivatives ATO opens at 08:45, before HOSE)."""
    local = moment.astimezone(VN)
    if not is_trading_day(local.date()):
        return False
    seconds = seconds_of_day(local)
    return any(phase_of_day(board, seconds) in OPEN_PHASES for board in _SESSION_SECONDS)


def session_code(phase_name):
    """SSI's TradingSession code for one of PHASES (None before the first session)."""
    return SESSION_CODES[phase_name]


SESSION_CODES = {"pre_open": None, "ato": "ATO", "continuous": "LO", "lunch": "BREAK", "atc": "ATC", "closed": "C"}


def is_active(moment):
    """From shortly before the first session to shortly after the last, on a
    trading day: the hours in which a feed polls at full speed."""
    local = moment.astimezone(VN)
    return is_trading_day(local.date()) and dt.time(8, 40) <= local.time() < dt.time(15, 5)


def tick_size(price, board="HOSE"):
    """Price step in VND for a stock on `board` (HOSE table for stocks and funds)."""
    if board != "HOSE":
        return 100
    if price < 10_000:
        return 10
    if price < 50_000:
        return 50
    return 100


def round_to_tick(price, board="HOSE"):
    tick = tick_size(price, board)
    return round(price / tick) * tick


def bands(ref, board="HOSE"):
    """(ceiling, floor) for a stock: ceiling rounds down, floor rounds up to the
    tick of the resulting price. Integer arithmetic: no float rounding at edges."""
    pct = round(BAND[board] * 100)
    up = ref * (100 + pct)  # hundredths of VND
    down = ref * (100 - pct)
    tick = tick_size(up // 100, board)
    ceiling = up // (100 * tick) * tick
    tick = tick_size(-(-down // 100), board)
    floor = -(-down // (100 * tick)) * tick
    return ceiling, floor


def futures_bands(ref):
    """(ceiling, floor) in index points for VN30 futures, on the 0.1-point tick."""
    tenths = round(ref * 10)
    ceiling = (tenths * 107) // 100
    floor = -((-tenths * 93) // 100)
    return ceiling / 10, floor / 10


# --- VN30 futures ------------------------------------------------------------

_YEAR_CHARS = "ABCDEFGHJKLMNPQRSTVWXYZ"  # from 2020; I, O, U are skipped
_MONTH_CHARS = "123456789ABC"


def third_thursday(year, month):
    first = dt.date(year, month, 1)
    offset = (3 - first.weekday()) % 7  # Thursday is weekday 3
    return first + dt.timedelta(days=offset + 14)


def futures_expiry(year, month):
    """Last trading day: the third Thursday, or the trading day before it when
    that is a holiday (February 2026: the 19th fell in Tết, so the 13th)."""
    day = third_thursday(year, month)
    return day if is_trading_day(day) else previous_trading_day(day)


def front_month(day):
    """(year, month) of the front-month contract trading on `day`: the current
    month until its expiry, then the next month."""
    if day > futures_expiry(day.year, day.month):
        return (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return day.year, day.month


def futures_code(year, month):
    """KRX-era exchange code, e.g. Dec 2026 -> 41I1GC000."""
    return f"41I1{_YEAR_CHARS[year - 2020]}{_MONTH_CHARS[month - 1]}000"


def legacy_futures_code(year, month):
    """Pre-KRX board code, e.g. Dec 2026 -> VN30F2612."""
    return f"VN30F{year % 100:02d}{month:02d}"


def parse_futures_code(code):
    """(year, month) from `41I1GC000` or `VN30F2612`; None if it is neither."""
    code = (code or "").strip().upper()
    if len(code) == 9 and code.startswith("41I1") and code.endswith("000"):
        year_char, month_char = code[4], code[5]
        if year_char in _YEAR_CHARS and month_char in _MONTH_CHARS:
            return 2020 + _YEAR_CHARS.index(year_char), _MONTH_CHARS.index(month_char) + 1
        return None
    if len(code) == 9 and code.startswith("VN30F") and code[5:].isdigit():
        month = int(code[7:9])
        if 1 <= month <= 12:
            return 2000 + int(code[5:7]), month
    return None


def futures_contract(day, override=""):
    """(symbol, alias, expiry) of the contract to show on `day`: FUTURES_OVERRIDE
    when set, else the front month by the third-Thursday rule."""
    if override:
        parsed = parse_futures_code(override)
        if parsed is None:
            return override, override, None
        return override, legacy_futures_code(*parsed), futures_expiry(*parsed)
    year, month = front_month(day)
    return futures_code(year, month), legacy_futures_code(year, month), futures_expiry(year, month)


def epoch_ms(moment):
    return int(moment.timestamp() * 1000)
