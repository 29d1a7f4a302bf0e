"""FEED_SOURCE=ssi with SSI_STREAMING=true: the hub for real time, REST for the rest.

The board lives in memory (`live.Board`), fed by hub links (one per channel
string: X-TRADE, X-QUOTE, R, MI, F, each list split at
SSI_HUB_SYMBOLS_PER_LINK). While only the v1 streams are watched the links
carry their symbols (the VN30 basket, extras, the front-month future, five
indices); while someone follows a topic they carry the whole universe, and a
change of set is sent on the open links (`HubStream.update`).

The universe (`universe.load_universe`) is loaded once a trading day in the
background; until it is, and whenever SSI fails to give it, the last good one
(shared state) serves.

REST does what it is good at, from one background task, one request at a time
within SSI_MAX_RPS: the day's reference data (VN30 basket, the front-month
future), a snapshot of what is watched at start and after every reconnect of
the hub (the whole market's prices per exchange while a topic is followed;
every index once), the index sparkline from IntradayOhlc once a day, a refresh
of the HOSE board once a minute while foreign flow is watched (REST's foreign
values are exact, the hub's are not), and polling at the REST cadence while
the hub is down.

The market's hours decide the rest: out of them (nights, weekends, holidays:
`market.is_active`) no hub link is held; one REST snapshot of the last close
serves the board until the next session.

`fetch()` never waits on the network once the board holds what the v1 streams
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
import random
import time

from django.conf import settings

from stocktracker.lib.aio import running
from stocktracker.lib.catalogue import FOREIGN, INDEX, MARKET, STREAMS
from stocktracker.lib.state import StateUnavailable

from . import market
from . import universe as universes
from .hub import CHANNEL_TYPES, HubStream, channel_strings
from .live import Board
from .payloads import FeedData, Futures
from .rows import lower_keys, pick
from .simulator import POINT_EVERY_S
from .ssi import SSIError, SSISource, backoff_delay, parse_ssi_date

log = logging.getLogger("apps.feed.streaming")

BOARD_REFRESH_S = 60.0  # whole-HOSE-board refresh while foreign flow is watched
FIRST_DATA_WAIT_S = 20.0  # longest a fetch waits for the first snapshot of a part
LOOP_SLICE_S = 0.5
STALE_GRACE_S = 2.0  # the hub down this long: the feed says `stale`
# At start the links come up while the first snapshot is in flight: a part asked
# for this shortly before they were all up counts (each next hub message heals
# the symbol it is about). After a reconnect there is no such slack.
START_SLACK_S = 5.0
UNIVERSE_RETRY_S = 30.0  # first wait after a failed universe load (doubling, jittered)
UNIVERSE_RETRY_CAP_S = 900.0
RESOLVE_RETRY_S = 60.0  # the day's reference data taken from the last good universe is asked for again after this
MARKET_PARTS = ("stocks:HNX", "stocks:UPCOM", "stocks:DER")  # "board" is HOSE's
TRADE_TYPES = ("X-TRADE", "X")

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

    def __init__(self, client=None, *, stream_url=None, hub_options=None, symbols_per_link=None, **kwargs):
        super().__init__(client, **kwargs)
        self.board = Board(index_codes=None)
        self.board.spell(market.INDEX_CODES)
        self.hub = HubStream(
            stream_url or settings.SSI_STREAM_URL,
            self.client,
            on_message=self.board.apply,
            on_link=self._on_link,
            now=self.now,
            **(hub_options or {}),
        )
        self.symbols_per_link = symbols_per_link or settings.SSI_HUB_SYMBOLS_PER_LINK
        self.needs = set()
        self.topics_wanted = False
        self.universe = None  # today's, else the last good one (None until one is known)
        self.universe_day = None  # the trading day whose universe was loaded
        self.universe_error = None
        self.universe_retry = UNIVERSE_RETRY_S
        self.universe_task = None
        self.resolved_at = None  # monotonic time the day was resolved from the last good universe
        self.live = False  # the market's hours: hub links are held
        self.have = set()  # parts the board holds for its day (kept through idle)
        self.closed_have = set()  # parts taken since the market closed (one snapshot of the close)
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

    def want_topics(self, wanted):
        """Whether someone follows a topic: the whole market, not only the v1 streams."""
        self.topics_wanted = bool(wanted)

    async def fetch(self, needs):
        self.needs = set(needs)
        now = self.now()
        day = market.trading_date(now)
        await self._ensure(day, now)
        wanted = parts_for(self.needs)  # the topics' parts fill the board in the background
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
            self.topics_wanted = False
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
        task, self.universe_task = self.universe_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.client.aclose()

    # --- state -----------------------------------------------------------------------

    def _events(self):
        if self._kick is None:
            self._kick = asyncio.Event()
            self._progress = asyncio.Event()

    def _wake(self):
        self._events()
        self._kick.set()

    async def _ensure(self, day, now):
        self._events()
        basket, contract = await self.resolve_day(day)  # REST once a day
        if self.universe_day != day and (self.universe_task is None or self.universe_task.done()):
            self.universe_task = asyncio.ensure_future(self._load_universe(day))
        if self.board.day != day:
            if self.board.day is not None:
                log.info("new trading day %s: the board starts empty", day)
            self.board.reset(day)
            self.have.clear()
            self.closed_have.clear()
            self.taken_at.clear()
            self._data = None
        live = market.is_active(now)
        if live != self.live:
            log.info("market %s: %s", "open" if live else "closed", "hub links on" if live else "no hub link")
            self.live = live
            self.closed_have.clear()  # closing: one snapshot of the close
        if not live:
            if self.hub.running:
                await self.hub.stop()
        else:
            subscriptions = self._subscriptions(basket, contract)
            if not self.hub.running:
                self.hub.start(subscriptions)
            elif subscriptions != self.subscribed:
                log.info("SSI hub: %d symbols now (sent on the open links)", _symbols(subscriptions))
                await self.hub.update(subscriptions)
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
        universe = self.universe
        if self.topics_wanted and universe is not None:
            everything = [*universe.instruments, *traded]
            room = [s for s, i in universe.instruments.items() if i.exchange != "DER"] + stocks
            symbols = {
                "X-TRADE": everything,
                "X-QUOTE": everything,
                "R": room,
                "MI": [*universe.indices, *market.INDEX_CODES],
                "F": everything,
            }
        return [sub for kind in CHANNEL_TYPES for sub in channel_strings(kind, symbols[kind], self.symbols_per_link)]

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
        planned = reason in ("rotate", "stopped")  # `_stop` sees to a stop in trading hours
        if not up and not planned:
            log.warning("SSI hub %s link down (%s): REST polling until it is back", channel.kind, reason)
            if channel.kind in TRADE_TYPES and not market.is_quiet(self.now()):
                self.board.gap()  # the hub replays nothing: trades in the gap are lost to the active volumes
        self._wake()

    async def _stop(self):
        task, self.rest_task = self.rest_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.hub.running and self.live and not market.is_quiet(self.now()):
            self.board.gap()  # links closed while the market trades (nobody watched)
        await self.hub.stop()
        self.subscribed = None

    def _snapshot_data(self, now, day):
        key = (self.board.version, market.phase(now), day, frozenset(self.needs))
        if key == self._data_key and self._data is not None:
            return self._data  # unchanged: the runner skips building
        basket, contract = self._day[1], self._day[2]
        shown = {*basket, *self.extra}
        rows = self.board.rows
        # The v1 streams show the basket, the extras and the HOSE board's totals.
        stocks = [
            row
            for symbol, row in rows.items()
            if symbol != contract.symbol and (symbol in shown or _exchange(row) == "HOSE")
        ]
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

    async def resolve_day(self, day):
        """The VN30 basket and the front-month future from REST; while REST fails,
        from the last good universe (and REST again a minute later)."""
        if self.resolved_at is not None and self._day and self._day[0] == day:
            if time.monotonic() - self.resolved_at < RESOLVE_RETRY_S:
                return self._day[1], self._day[2]
            self._day = None
        try:
            resolved = await super().resolve_day(day)
        except SSIError as exc:
            universe = self.universe or await universes.last_good()
            vn30 = universe.indices.get("VN30") if universe else None
            futures = [f for f in universe.futures("VN30") if f.expiry and f.expiry >= day] if universe else []
            if vn30 is None or not vn30.members or not futures:
                raise
            contract = market.futures_contract(day, self.override) if self.override else None
            if contract is None:
                parsed = market.parse_futures_code(futures[0].symbol)
                alias = market.legacy_futures_code(*parsed) if parsed else futures[0].symbol
                contract = (futures[0].symbol, alias, futures[0].expiry)
            self._day = (day, list(vn30.members), Futures(*contract, row=None))
            self.resolved_at = time.monotonic()
            log.warning("SSI reference data: %s; the VN30 basket and %s from the universe of %s", exc,
                        contract[0], universe.day)  # fmt: skip
            return self._day[1], self._day[2]
        self.resolved_at = None
        return resolved

    # --- the universe ------------------------------------------------------------------

    async def _load_universe(self, day):
        """Today's universe; meanwhile, and through failures, the last good one."""
        if self.universe is None:
            kept = await universes.last_good()
            if kept is not None and self.universe is None:
                log.info("universe: the last good one (%s) until today's is loaded", kept.day)
                self._adopt(kept)
        waited = time.monotonic() + FIRST_DATA_WAIT_S
        # The first snapshot of what is watched goes first (the REST task's to take).
        while not set(parts_for(self.needs)) <= self.have and time.monotonic() < waited:  # noqa: ASYNC110
            await asyncio.sleep(LOOP_SLICE_S)
        failures = 0
        while running() and self.universe_day != day:
            try:
                loaded = await universes.load_universe(self.client, day, previous=self.universe)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; the last good universe serves
                failures += 1
                self.universe_error = exc
                kept = f"keeping the one of {self.universe.day}" if self.universe else "no universe yet"
                log.warning("SSI universe of %s: %s: %s; %s", day, type(exc).__name__, exc, kept)
                wait = min(UNIVERSE_RETRY_CAP_S, self.universe_retry * 2 ** (failures - 1))
                await asyncio.sleep(wait * random.uniform(0.5, 1.0))
                continue
            try:
                await universes.keep(loaded)
            except StateUnavailable:
                log.warning("could not keep the universe in shared state; it serves from memory")
            self._adopt(loaded)
            self.universe_day, self.universe_error = day, None
            counts = ", ".join(f"{e} {t} {n}" for (e, t), n in sorted(loaded.counts().items()))
            log.info("universe of %s: %d instruments (%s), %d indices", day, len(loaded.instruments), counts,
                     len(loaded.indices))  # fmt: skip

    def _adopt(self, universe):
        self.universe = universe
        self.board.spell(universe.indices)
        self.board.spell(market.INDEX_CODES)  # the v1 streams' spellings win
        self._wake()

    def _topic_parts(self):
        """REST parts of the whole market: every exchange's prices, every index."""
        parts = ["board", *MARKET_PARTS]
        codes = [*market.INDEX_CODES, *(self.universe.indices if self.universe else ())]
        return parts + [f"index:{code}" for code in dict.fromkeys(codes)]

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
        whole = self._topic_parts() if self.topics_wanted else []
        every = list(dict.fromkeys([*wanted, *whole]))
        moment = time.monotonic()
        if not self.live:
            # Out of trading hours (nights, weekends, holidays) the board no longer moves:
            # one snapshot of the close, then nothing until the next session.
            todo = [part for part in every if part not in self.closed_have]
        elif self.hub.up:
            # After every reconnect, a snapshot of the prices shown: what changed while a
            # link was down is missing from the board (indices heal with their next MI).
            fresh = self.fresh
            again = [*wanted, *(part for part in whole if not part.startswith("index:"))]
            todo = [part for part in dict.fromkeys(again) if part not in fresh]
            todo += [part for part in every if part not in self.have and part not in todo]
            watched = FOREIGN in self.needs or self.topics_wanted
            if not todo and watched and moment - self.last_board >= BOARD_REFRESH_S:
                todo = ["board"]  # REST's foreign values are exact, the hub's (HOSE) are not
        else:
            todo = [part for part in every if part not in self.have]
            if not todo and moment - self.last_poll >= super().interval():
                todo = [part for part in every if not part.startswith("index:") or part in wanted]
                self.last_poll = moment
        if todo:
            await self._take(day, todo)
        if INDEX in self.needs and self.backfilled_day != day and self.hub.up:
            await self._backfill(day)

    async def _take(self, day, parts):
        for part in parts:
            started, closed = time.monotonic(), not self.live
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
            elif part.startswith("stocks:"):
                code = part.split(":", 1)[1]
                self.board.apply_rest_stocks(await self.client.daily_stock_price(day, market_code=code), since, code)
            else:
                code = part.split(":", 1)[1]
                self.board.apply_rest_index(code, await self.client.daily_index(code, day), since)
            self.have.add(part)
            if closed and not self.live:  # asked for after the close: the close's snapshot
                self.closed_have.add(part)
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


def _symbols(subscriptions):
    return len({s for sub in subscriptions for s in sub.split(":", 1)[1].split("-")})


def _exchange(row):
    return row.get("Market") or row.get("MarketId") or row.get("Exchange")


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
