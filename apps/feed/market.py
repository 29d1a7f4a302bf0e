"""Vietnamese market rules: trading calendar, session phases, ticks, price bands
and VN30 futures codes (see docs/asyncapi.yaml and the SSI reference, section 6).

Pure functions of aware datetimes in Asia/Ho_Chi_Minh; no I/O. A trading day
follows the exchanges' notices first: MARKET_OPEN_DATES and MARKET_CLOSED_DATES
(settings, for what is announced after a release), then EXCHANGE_NOTICES
(what the exchanges published and the `holidays` package disagrees with), then
a weekday that is not a Vietnamese public holiday (the `holidays` package:
Tết, Hùng Kings, 30/4, 1/5, 2/9 and the government's swapped days off, which
the exchanges also close for).
"""

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays
from django.conf import settings

VN = ZoneInfo("Asia/Ho_Chi_Minh")

# `plo`: HNX's post-close session (14:45-15:00, orders at the closing price).
PHASES = ("pre_open", "ato", "continuous", "lunch", "atc", "plo", "closed")
OPEN_PHASES = ("ato", "continuous", "lunch", "atc", "plo")

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
        ("14:45", "15:00", "plo"),
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


# The exchanges' published calendars where the `holidays` package differs:
# date -> (open?, the notice). Settings still win (a later notice).
EXCHANGE_NOTICES = {
    # "Vietnam Cultural Day" (Politburo Resolution 80) is a holiday in the
    # package, but not on HOSE's 2026 trading calendar (09/12/2025) nor HNX's.
    dt.date(2026, 11, 24): (True, "HOSE and HNX 2026 trading calendars: a trading day"),
}


@lru_cache(maxsize=64)
def _public_holidays(year):
    return frozenset(holidays.country_holidays("VN", years=year))


def is_holiday(day):
    """A weekday on which the exchanges are closed."""
    return day.weekday() < 5 and not is_trading_day(day)


def is_trading_day(day):
    if day in settings.MARKET_OPEN_DATES:
        return True
    if day in settings.MARKET_CLOSED_DATES:
        return False
    notice = EXCHANGE_NOTICES.get(day)
    if notice is not None:
        return notice[0]
    return day.weekday() < 5 and day not in _public_holidays(day.year)


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


SESSION_CODES = {
    "pre_open": None,
    "ato": "ATO",
    "continuous": "LO",
    "lunch": "BREAK",
    "atc": "ATC",
    "plo": "PLO",  # SSI's own code for HNX's post-close session is not documented
    "closed": "C",
}


def is_active(moment):
    """From shortly before the first session to shortly after the last, on a
    trading day: the hours in which a feed polls at full speed."""
    local = moment.astimezone(VN)
    return is_trading_day(local.date()) and dt.time(8, 40) <= local.time() < dt.time(15, 5)


# Trading stretches of a trading day (start, end): the hours in which no
# planned reconnect of an upstream link may happen.
TRADING_STRETCHES = ((dt.time(8, 40), dt.time(11, 30)), (dt.time(13, 0), dt.time(15, 0)))


def is_quiet(moment):
    """No board trades: not a trading day, before 08:40, lunch, or from 15:00."""
    local = moment.astimezone(VN)
    if not is_trading_day(local.date()):
        return True
    return not any(start <= local.time() < end for start, end in TRADING_STRETCHES)


def next_stretch(moment):
    """(start, end) aware datetimes of the trading stretch in progress or next
    today; None when none is left today (or it is not a trading day)."""
    local = moment.astimezone(VN)
    if not is_trading_day(local.date()):
        return None
    for start, end in TRADING_STRETCHES:
        if local.time() < end:
            day = local.date()
            return dt.datetime.combine(day, start, tzinfo=VN), dt.datetime.combine(day, end, tzinfo=VN)
    return None


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
