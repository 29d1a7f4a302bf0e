"""FEED_SOURCE=ssi with SSI_STREAMING=true: the hub for real time, REST for the rest.

The board lives in memory (`live.Board`), fed by one hub link per channel
type (X-TRADE, X-QUOTE, R, MI, F) for exactly the board's symbols. REST does
what it is good at, from one background task, one request at a time within
SSI_MAX_RPS: the day's reference data (VN30 basket, the front-month future),
a snapshot of what the subscribed streams need at start and after every
reconnect of the hub, the index sparkline from IntradayOhlc once a day, a
refresh of the whole HOSE board once a minute while `foreign` is watched (the
board's foreign totals cover symbols the hub is not asked for), and polling
at the REST cadence while the hub is down.

`fetch()` never waits on the network once the board holds what the streams
need: it returns the board as it is (the same FeedData while nothing
changed). With no subscriber the runner calls `idle()`: the hub links and the
REST task stop, the day's reference data and the last board stay, so the next
subscriber gets a complete board at once and fresh data as soon as the links
are back.
"""

import asyncio
import datetime as dt
import logging
import math
import time

from django.conf import settings

from stocktracker.lib.aio import running
from stocktracker.lib.catalogue import FOREIGN, INDEX, MARKET, STREAMS

from . import market
from .hub import CHANNEL_TYPES, HubStream
from .live import Board
from .payloads import FeedData, Futures
from .rows import lower_keys, pick
from .simulator import POINT_EVERY_S
from .ssi import SSIError, SSISource, backoff_delay, parse_ssi_date

log = logging.getLogger("apps.feed.streaming")

BOARD_REFRESH_S = 60.0  # whole-HOSE-board refresh while `foreign` is watched
FIRST_DATA_WAIT_S = 20.0  # longest a fetch waits for the first snapshot of a part
LOOP_SLICE_S = 0.5
STALE_GRACE_S = 2.0  # the hub down this long: the feed says `stale`
# At start the links come up while the first snapshot is in flight: a part asked
# for this shortly before they were all up counts (each next hub message heals
# the symbol it is about). After a reconnect there is no such slack.
START_SLACK_S = 5.0

STREAM_PARTS = {
    MARKET: ("board", "future", "index:VN30"),
    FOREIGN: ("board",),
    INDEX: tuple(f"index:{code}" for code in market.INDEX_CODES),
}


def parts_for(needs):
    """REST parts the subscribed streams need, in the order they need them."""
    ordered = []
    for stream in STREAMS:
        if stream in needs:
            ordered.extend(part for part in STREAM_PARTS[stream] if part not in ordered)
    return ordered


class StreamingSource(SSISource):
    name = "ssi"
    simulated = False

    def __init__(self, client=None, *, stream_url=None, hub_options=None, **kwargs):
        super().__init__(client, **kwargs)
        self.board = Board(market.INDEX_CODES)
        self.hub = HubStream(
            stream_url or settings.SSI_STREAM_URL,
            self.client,
            on_message=self.board.apply,
            on_link=self._on_link,
            **(hub_options or {}),
        )
        self.needs = set()
        self.have = set()  # parts the board holds for its day (kept through idle)
        self.taken_at = {}  # part -> monotonic start of its latest REST request
        self.subscribed = None
        self.rest_task = None
        self.rest_error = None
        self.last_poll = -math.inf
        self.last_board = -math.inf
        self.backfill = None  # {code: [[ms, value], ...]} until the runner takes it
        self.backfilled_day = None
        self._kick = None
        self._progress = None
        self._data = None
        self._data_key = None

    # --- the runner's interface ------------------------------------------------------

    async def fetch(self, needs):
        self.needs = set(needs)
        now = self.now()
        day = market.trading_date(now)
        await self._ensure(day)
        wanted = parts_for(self.needs)
        deadline = time.monotonic() + FIRST_DATA_WAIT_S
        while not set(wanted) <= self.have:
            self._wake()
            left = deadline - time.monotonic()
            if left <= 0 or (self.rest_error is not None and not self.hub.up):
                error = self.rest_error
                raise SSIError(f"no snapshot yet: {error or 'SSI is slow'}", retryable=True)
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), timeout=min(left, LOOP_SLICE_S))
            except TimeoutError:
                pass
        return self._snapshot_data(now, day)

    async def idle(self):
        """No subscriber: no hub link and no REST data call (the board is kept)."""
        if self.hub.running or self.rest_task is not None:
            log.info("no subscribers: closing the hub links (the board is kept)")
            self.needs = set()
            await self._stop()

    @property
    def degraded(self):
        """Why the data is not live (the runner says `stale`), or "" when it is."""
        if not self.hub.running or self.hub.up:
            return ""
        if self.hub.down_since is not None and time.monotonic() - self.hub.down_since < STALE_GRACE_S:
            return ""  # a reconnect that takes a moment is not an outage
        detail = self.hub.describe_down() or "stream connecting"
        if self.rest_error is not None:
            detail += f"; REST: {self.rest_error}"
        return detail[:200]

    def take_backfill(self):
        points, self.backfill = self.backfill, None
        return points

    def interval(self):
        if self.hub.running:
            return settings.FEED_PUBLISH_INTERVAL
        return super().interval()

    def slow_after(self):
        """A cycle that may wait for the first REST snapshot is slow only past that."""
        return max(2.0, self.requests_per_cycle() * self.client.budget.spacing * 1.5 + 1.0)

    async def aclose(self):
        await self._stop()
        await self.client.aclose()

    # --- state -----------------------------------------------------------------------

    def _events(self):
        if self._kick is None:
            self._kick = asyncio.Event()
            self._progress = asyncio.Event()

    def _wake(self):
        self._events()
        self._kick.set()

    async def _ensure(self, day):
        self._events()
        basket, contract = await self.resolve_day(day)  # REST once a day
        if self.board.day != day:
            if self.board.day is not None:
                log.info("new trading day %s: the board starts empty", day)
            self.board.reset(day)
            self.have.clear()
            self.taken_at.clear()
            self._data = None
        subscriptions = self._subscriptions(basket, contract)
        if subscriptions != self.subscribed or not self.hub.running:
            await self.hub.stop()
            self.hub.start(subscriptions)
            self.subscribed = subscriptions
        if self.rest_task is None or self.rest_task.done():
            self.rest_task = asyncio.ensure_future(self._rest_loop())

    def _subscriptions(self, basket, contract):
        stocks = list(dict.fromkeys([*basket, *self.extra]))
        traded = [*stocks, contract.symbol]
        symbols = {
            "X-TRADE": traded,
            "X-QUOTE": traded,
            "R": stocks,
            "MI": list(market.INDEX_CODES),
            "F": traded,
        }
        return [f"{kind}:{'-'.join(symbols[kind])}" for kind in CHANNEL_TYPES]

    @property
    def fresh(self):
        """Parts whose REST answer is no older than the hub's links (see `_rest_step`)."""
        since = self.hub.up_since
        if since is None:
            return set()
        if not self.hub.reconnected:
            since = max(since - START_SLACK_S, self.hub.started_at)
        return {part for part, at in self.taken_at.items() if at >= since}

    def _on_link(self, channel, up, reason):
        if not up:
            log.warning("SSI hub %s link down (%s): REST polling until it is back", channel.kind, reason)
        self._wake()

    async def _stop(self):
        task, self.rest_task = self.rest_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.hub.stop()

    def _snapshot_data(self, now, day):
        key = (self.board.version, market.phase(now), day, frozenset(self.needs))
        if key == self._data_key and self._data is not None:
            return self._data  # unchanged: the runner skips building
        basket, contract = self._day[1], self._day[2]
        rows = self.board.rows
        stocks = [row for symbol, row in rows.items() if symbol != contract.symbol]
        self._data = FeedData(
            trading_date=day,
            phase=key[1],
            source_ms=market.epoch_ms(now),
            simulated=False,
            basket=basket,
            extra=self.extra,
            stocks=stocks,
            futures=Futures(contract.symbol, contract.alias, contract.expiry, rows.get(contract.symbol)),
            indices=dict(self.board.indices),
        )
        self._data_key = key
        return self._data

    # --- REST --------------------------------------------------------------------------

    async def _rest_loop(self):
        failures = 0
        while running():
            try:
                await self._rest_step()
                failures, self.rest_error = 0, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; the loop must go on
                failures += 1
                self.rest_error = exc
                log.warning("SSI REST: %s: %s", type(exc).__name__, exc)
                self._progress.set()
                await asyncio.sleep(backoff_delay(failures, 1.0))
                continue
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=LOOP_SLICE_S)
            except TimeoutError:
                pass

    async def _rest_step(self):
        day = self.board.day
        wanted = parts_for(self.needs)
        moment = time.monotonic()
        if self.hub.up:
            # After every reconnect, a snapshot of everything the streams show: what
            # changed while a link was down is missing from the board.
            fresh = self.fresh
            todo = [part for part in wanted if part not in fresh]
            if not todo and FOREIGN in self.needs and moment - self.last_board >= BOARD_REFRESH_S:
                todo = ["board"]
        else:
            todo = [part for part in wanted if part not in self.have]
            # Out of trading hours (nights, weekends, holidays) the board no longer moves:
            # REST fills what the board lacks, and polls nothing more.
            if not todo and market.is_active(self.now()) and moment - self.last_poll >= super().interval():
                todo = wanted
                self.last_poll = moment
        if todo:
            await self._take(day, todo)
        if INDEX in self.needs and self.backfilled_day != day and self.hub.up:
            await self._backfill(day)

    async def _take(self, day, parts):
        for part in parts:
            started = time.monotonic()
            # What the hub sent since its last drop is newer than any REST answer;
            # what it sent before may have missed updates: REST replaces that.
            since = self.hub.last_drop if self.hub.up else time.monotonic()
            contract = self._day[2]
            if part == "board":
                rows = await self.client.daily_stock_price(day, market_code="HOSE")
                self.board.apply_rest_stocks(rows, since, market="HOSE")
                for symbol in self._extras_off_hose(day, rows):
                    self.board.apply_rest_stocks(await self._extra_rows(day, symbol), since)
                self.last_board = started
            elif part == "future":
                rows = await self.client.daily_stock_price(day, market_code="DER", symbol=contract.symbol, page_size=10)
                match = [r for r in rows if str(pick(lower_keys(r), ("symbol",)) or "").upper() == contract.symbol]
                self.board.apply_rest_stocks(match, since, market="DER")
            else:
                code = part.split(":", 1)[1]
                self.board.apply_rest_index(code, await self.client.daily_index(code, day), since)
            self.have.add(part)
            self.taken_at[part] = started
            self._progress.set()

    async def _backfill(self, day):
        """Today's sparkline from IntradayOhlc (1-minute bars, on the 5-minute grid)."""
        points = {}
        for code in market.INDEX_CODES:
            bars = await self.client.intraday_ohlc(code, day)
            series = []
            for bar in bars:
                fields = lower_keys(bar)
                moment = _bar_moment(fields, day)
                value = _float(pick(fields, ("close", "value")))
                if moment is None or value is None:
                    continue
                ms = market.epoch_ms(moment)
                if not series or ms >= series[-1][0] + POINT_EVERY_S * 1000:
                    series.append([ms, round(value, 2)])
            points[code] = series
        self.backfill = points
        self.backfilled_day = day
        log.info("sparkline back-filled from IntradayOhlc: %d points", sum(len(p) for p in points.values()))


def _bar_moment(fields, day):
    date = parse_ssi_date(fields.get("tradingdate") or "") or day
    try:
        clock = dt.time.fromisoformat(str(fields.get("time") or "").strip())
    except ValueError:
        return None
    return dt.datetime.combine(date, clock, tzinfo=market.VN)


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
