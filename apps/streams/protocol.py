"""Wire protocol v1: close codes, refusal reasons and frame builders.

The feed and the admin talk to sockets only through this module and
`apps.streams.publish`; they never build frames themselves. Stream names
come from `stocktracker.lib.catalogue`, group and key names from
`stocktracker.lib.keys`.
"""

import json
import secrets
import time
from enum import IntEnum
from typing import NamedTuple

from stocktracker.lib import catalogue
from stocktracker.lib.state.frames import epoch_day, epoch_of  # noqa: F401 - the wire format of an epoch

PROTOCOL_VERSION = 1
STREAMS = catalogue.STREAMS


class Close(IntEnum):
    """Close codes (see the AsyncAPI document). 40xx: do not retry unchanged;
    41xx: back off and retry; 42xx: reconnect now."""

    BAD_CREDENTIALS = 4001
    FORBIDDEN = 4003
    REVOKED = 4004
    EXPIRED = 4005
    ABUSE = 4008
    KICKED = 4009  # disconnected by staff from the live-sessions admin
    OVER_LIMIT = 4100
    # Too many failed sign-ins from the client's address: retry after the
    # `error` frame's `retry_after` seconds (a known credential is never refused so).
    SIGN_IN_LIMITED = 4101
    TOO_SLOW = 4103
    RESTARTING = 4200
    TRY_AGAIN_LATER = 1013


class Reason(NamedTuple):
    """Why a client is refused or closed: the WebSocket close code, the HTTP
    status the REST snapshot answers with, the `error` frame's code and
    message; `retry_after`: seconds before a retry can succeed, when known
    (the `error` frame's `retry_after`, the REST `Retry-After`)."""

    close: int
    status: int
    error: str
    message: str
    retry_after: int | None = None


class Refusal:
    """Every refusal reason, in one place: the consumers, the REST snapshot,
    the dashboard's JS (`refusal_table()`, passed through json_script) and the
    docs (`docs/protocol.md` is checked against it) read it from here."""

    BAD_TOKEN = Reason(Close.BAD_CREDENTIALS, 401, "auth_failed", "token not recognised")
    AUTH_REQUIRED = Reason(Close.BAD_CREDENTIALS, 401, "auth_required", "authenticate first")
    AUTH_TIMEOUT = Reason(Close.BAD_CREDENTIALS, 401, "auth_timeout", "no credentials in time")
    SESSION_INACTIVE = Reason(Close.BAD_CREDENTIALS, 401, "auth_failed", "session user is inactive or removed")
    ORIGIN_FORBIDDEN = Reason(Close.FORBIDDEN, 403, "origin_forbidden", "origin not allowed for session sign-in")
    STREAM_FORBIDDEN = Reason(Close.FORBIDDEN, 403, "stream_forbidden", "stream not allowed for this token")
    REVOKED = Reason(Close.REVOKED, 401, "token_revoked", "token revoked")
    RETIRED = Reason(Close.REVOKED, 401, "token_retired", "token replaced and its rotation grace has ended")
    SESSION_ENDED = Reason(Close.REVOKED, 401, "session_revoked", "this account was deactivated or removed")
    # Logged out, password changed, session expired or deleted: sign in again.
    SIGNED_OUT = Reason(Close.BAD_CREDENTIALS, 401, "signed_out", "signed out or the session ended; sign in again")
    EXPIRED = Reason(Close.EXPIRED, 401, "token_expired", "token expired")
    TOO_LARGE = Reason(Close.ABUSE, 413, "too_large", "message too large")
    FLOODING = Reason(Close.ABUSE, 429, "flooding", "too many messages")
    LIMITED = Reason(
        Close.SIGN_IN_LIMITED, 429, "too_many_failures", "too many failed sign-ins from this address; retry later"
    )
    KICKED = Reason(Close.KICKED, 403, "disconnected", "disconnected by an operator")
    OVER_LIMIT = Reason(Close.OVER_LIMIT, 429, "over_limit", "too many connections")
    LIMIT_LOWERED = Reason(Close.OVER_LIMIT, 429, "over_limit", "connection limit lowered")
    OVERLOADED = Reason(Close.TRY_AGAIN_LATER, 503, "overloaded", "server at capacity; retry later")
    SIGN_IN_FULL = Reason(Close.TRY_AGAIN_LATER, 503, "overloaded", "too many sockets signing in; retry later")
    TOO_SLOW = Reason(Close.TOO_SLOW, 503, "too_slow", "the client stopped reading")
    RESTARTING = Reason(Close.RESTARTING, 503, "restarting", "server restarting; reconnect")
    UNAVAILABLE = Reason(Close.TRY_AGAIN_LATER, 503, "unavailable", "service temporarily unavailable")
    # The accounts database cannot answer: "retry later", with a reason, never 1011.
    ACCOUNTS_DOWN = Reason(Close.TRY_AGAIN_LATER, 503, "unavailable", "sign-in is temporarily unavailable; retry later")
    BACKEND_LOST = Reason(Close.TRY_AGAIN_LATER, 503, "unavailable", "a backing service is unavailable; retry later")


def refusal_table() -> list[dict]:
    """The reasons as plain data (JS, docs, tests), one row per (close, error)."""
    rows, seen = [], set()
    for name, reason in vars(Refusal).items():
        if isinstance(reason, Reason) and (reason.close, reason.error) not in seen:
            seen.add((reason.close, reason.error))
            fields = {key: value for key, value in reason._asdict().items() if key != "retry_after"}
            rows.append({"name": name, **fields, "close": int(reason.close)})
    return rows


def now_ms() -> int:
    return int(time.time() * 1000)


def dumps(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def snapshot_frame(
    stream: str, *, epoch: str, seq: int, published_ms: int, source_ms: int, feed: str, data: dict, simulated: bool
) -> str:
    return dumps(
        {
            "type": "snapshot",
            "stream": stream,
            "epoch": epoch,
            "seq": seq,
            "published_ms": published_ms,
            "source_ms": source_ms,
            "feed": feed,
            "simulated": simulated,
            "data": data,
        }
    )


def snapshot_frame_parts(stream: str, **fields) -> tuple[str, str, str]:
    """`snapshot_frame` split around its `epoch` and `seq`: head + epoch + mid
    + str(seq) + tail is the frame, so the state layer can number it (and
    name its epoch) in the same step that stores it. The first matches are
    the header's: inside JSON strings quotes are escaped."""
    text = snapshot_frame(stream, epoch="", seq=0, **fields)
    head, found, rest = text.partition('"epoch":"",')
    assert found, "snapshot_frame writes epoch before data"
    between, found, tail = rest.partition('"seq":0,')
    assert found and not between, "snapshot_frame writes seq right after epoch"
    return head + '"epoch":"', '","seq":', "," + tail


def topic_frame_parts(topic, *, delta, published_ms, source_ms, feed, simulated, data):
    """A topic's `snapshot` frame cut around its epoch and seq (head, mid,
    tail), or with `delta` its `delta` frame cut around epoch, seq and prev
    (head, mid, mid2, tail): the state layer fills them in as it numbers it."""
    frame = {"type": "delta" if delta else "snapshot", "topic": topic, "epoch": "", "seq": 0}
    if delta:
        frame["prev"] = 0
    frame |= {"published_ms": published_ms, "source_ms": source_ms, "feed": feed, "simulated": simulated}
    text = dumps({**frame, "data": data})
    head, found, rest = text.partition('"epoch":"",')
    assert found, "the topic frame writes epoch before data"
    if not delta:
        between, found, tail = rest.partition('"seq":0,')
        assert found and not between
        return head + '"epoch":"', '","seq":', "," + tail
    between, found, rest = rest.partition('"seq":0,')
    assert found and not between
    between, found, tail = rest.partition('"prev":0,')
    assert found and not between
    return head + '"epoch":"', '","seq":', ',"prev":', "," + tail


def snapshot_position(text: str):
    """(epoch, seq) of a snapshot frame, read from its header without parsing
    `data`; None for any other frame."""
    head, found, _ = text.partition(',"data":')
    if not found or not head.startswith('{"type":"snapshot"'):
        return None
    try:
        frame = json.loads(head + "}")
    except ValueError:
        return None
    return frame.get("epoch"), frame.get("seq")


def snapshot_feed(text: str):
    """The `feed` state of a snapshot frame, read from the header that
    `snapshot_frame` writes before `data`, so a large frame is not parsed;
    any other shape falls back to parsing it."""
    head, found, _ = text.partition(',"data":')
    if found:
        marker = '"feed":"'
        start = head.find(marker)
        if start >= 0:
            start += len(marker)
            end = head.find('"', start)
            if end >= 0 and "\\" not in head[start:end]:
                return head[start:end]
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    return frame.get("feed") if isinstance(frame, dict) else None


def is_newer(text: str, than: str) -> bool:
    """True if snapshot `text` should follow `than` (a later seq, or another
    epoch: a new trading day); unknown shapes count as newer."""
    mine, theirs = snapshot_position(text), snapshot_position(than)
    if mine is None or theirs is None or mine[1] is None or theirs[1] is None:
        return text != than
    if mine[0] != theirs[0]:
        return True
    return mine[1] > theirs[1]


def feed_frame(state: str, *, since_ms: int, detail: str = "", simulated: bool = False) -> str:
    return dumps({"type": "feed", "state": state, "since_ms": since_ms, "detail": detail, "simulated": simulated})


def feed_frame_if_newer(latest, feed):
    """A `feed` frame when the feed's state differs from the snapshot's
    (read from the frame's header, without parsing its data)."""
    if not feed or not feed.get("state"):
        return None
    if latest and snapshot_feed(latest) == feed["state"]:
        return None
    return feed_frame(
        feed["state"],
        since_ms=feed.get("since_ms") or now_ms(),
        detail=feed.get("detail", ""),
        simulated=bool(feed.get("simulated")),
    )


def welcome_frame(stream: str, *, heartbeat_s: float, limits: dict) -> str:
    return dumps(
        {
            "type": "welcome",
            "stream": stream,
            "protocol": PROTOCOL_VERSION,
            "server_time_ms": now_ms(),
            "heartbeat_s": heartbeat_s,
            "limits": limits,
        }
    )


def heartbeat_frame() -> str:
    # Never empty: daphne silently drops empty sends.
    return dumps({"type": "heartbeat", "nonce": secrets.token_urlsafe(6), "server_time_ms": now_ms()})


def pong_frame() -> str:
    return dumps({"type": "pong", "server_time_ms": now_ms()})


def error_frame(code: str, message: str, retry_after: int | None = None) -> str:
    frame = {"type": "error", "code": code, "message": message}
    if retry_after is not None:
        frame["retry_after"] = retry_after
    return dumps(frame)
