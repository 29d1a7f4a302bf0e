"""What a client can follow: the v1 streams and the topics, with their groups
and row fields. One source for models, routing, the feed, payloads, the
AsyncAPI document (checked by a test) and the page's JS (through json_script)."""

import re
from typing import NamedTuple

# --- v1 streams -----------------------------------------------------------------

MARKET, FOREIGN, INDEX = "market", "foreign", "index"

# (name, label) in display order; the name is the URL part (/ws/<name>) and the
# `stream` field of every frame.
STREAM_CHOICES = ((MARKET, "Market board"), (FOREIGN, "Foreign flow"), (INDEX, "Index board"))
STREAMS = tuple(name for name, _ in STREAM_CHOICES)

# --- topics ------------------------------------------------------------------------

BOARD, QUOTE, INDEX_TOPIC, FOREIGN_TOPIC, STATUS = "board", "quote", "index", "foreign", "status"
FAMILIES = (BOARD, QUOTE, INDEX_TOPIC, FOREIGN_TOPIC, STATUS)

# board:<GROUP>: the instruments of an index basket, an exchange or a type.
BOARD_GROUPS = ("VN30", "VN100", "HOSE", "HNX", "HNX30", "UPCOM", "ETF", "CW", "FU")
# foreign:<GROUP>: foreign flow over an index basket or an exchange.
FOREIGN_GROUPS = ("VN30", "HOSE", "HNX", "UPCOM")
EXCHANGES = ("HOSE", "HNX", "UPCOM", "DER")
INSTRUMENT_TYPES = ("stock", "etf", "cw", "fund", "futures", "bond_futures")

# What a token's v1 stream scope allows (`status` is open to every token).
FAMILIES_OF_STREAM = {MARKET: (BOARD, QUOTE), FOREIGN: (FOREIGN_TOPIC,), INDEX: (INDEX_TOPIC,)}
OPEN_FAMILIES = (STATUS,)

# Symbols and index codes as the exchanges spell them: letters and digits.
_ARG = re.compile(r"^[A-Za-z0-9]{1,20}$")


class Topic(NamedTuple):
    family: str
    arg: str | None  # the group, symbol or index code; None for `status`

    def __str__(self):
        return self.family if self.arg is None else f"{self.family}:{self.arg}"


class UnknownTopic(ValueError):
    """Not a topic name this server knows (a well-formed name of an instrument
    or index that does not exist is the universe's business, not this one's)."""


def parse_topic(name):
    """`Topic` of a name such as "board:VN30", "quote:FPT", "index:VNINDEX",
    "foreign:HOSE" or "status"; raises UnknownTopic."""
    if not isinstance(name, str):
        raise UnknownTopic("a topic is a string")
    family, _, arg = name.partition(":")
    if family == STATUS and not arg:
        return Topic(STATUS, None)
    if family == BOARD and arg in BOARD_GROUPS:
        return Topic(BOARD, arg)
    if family == FOREIGN_TOPIC and arg in FOREIGN_GROUPS:
        return Topic(FOREIGN_TOPIC, arg)
    if family in (QUOTE, INDEX_TOPIC) and _ARG.match(arg):
        return Topic(family, arg.upper() if family == QUOTE else arg)
    raise UnknownTopic(f"unknown topic {name[:60]!r}")


def stream_of(family):
    """The v1 stream whose scope grants `family` (None: every token may follow it)."""
    for stream, families in FAMILIES_OF_STREAM.items():
        if family in families:
            return stream
    return None


def topic(family, arg=None):
    return str(Topic(family, arg))


def is_board(name):
    return name.startswith(BOARD + ":")


# --- row fields ----------------------------------------------------------------------
# A field that is not known is null, never 0. Prices of stocks, ETFs, CWs and
# funds in whole VND; futures and indices in points; volumes in shares
# (futures: contracts); values in VND.

QUOTE_FIELDS = (
    "symbol", "exchange", "type", "name",
    "ref", "ceiling", "floor", "open", "high", "low", "last", "change", "change_pct", "avg", "projected",
    "volume", "value", "bids", "asks", "last_volume",
    "active_buy_volume", "active_sell_volume", "active_partial",
    "foreign_buy_volume", "foreign_sell_volume", "foreign_buy_value", "foreign_sell_value", "foreign_values_exact",
    "foreign_room", "room_total",
    # session and status: the contract's codes (docs/asyncapi.yaml Session,
    # SSI's TradingStatus); a code SSI sends that is not one of them is null,
    # its raw value in session_raw / status_raw (else those are null).
    "session", "session_raw", "status", "status_raw",
    # covered warrants
    "underlying", "exercise_price", "exercise_ratio", "maturity",
    # futures
    "expiry", "basis",
)  # fmt: skip

INDEX_FIELDS = (
    "code", "name", "exchange", "value", "projected", "prior", "change", "change_pct", "volume", "value_traded",
    "advances", "declines", "unchanged", "ceilings", "floors", "session",
)  # fmt: skip

FOREIGN_FIELDS = ("trading_date", "totals", "top_buyers", "top_sellers", "speed")

# Depth of the order book each exchange publishes (levels a side).
BOOK_DEPTH = {"HOSE": 3, "HNX": 10, "UPCOM": 10, "DER": 10}
