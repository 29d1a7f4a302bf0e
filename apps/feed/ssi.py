"""SSI FastConnect Data (REST v2): an async client and the feed source built on it.

The client owns the access token (decoded `exp`, refreshed early and once on
an auth failure), a request budget that is never exceeded (SSI_MAX_RPS, token
requests included), paging, and the error policy: 429 waits its Retry-After;
timeouts, 5xx and garbage retry with full-jitter backoff capped at a minute;
whatever cannot succeed raises `SSIError` saying whether a retry can help.
Shapes and quirks: ../shared/reference/ssi-fastconnect.md (sections 1-4, 7).
"""

import asyncio
import base64
import datetime as dt
import email.utils
import json
import logging
import random
import time

import httpx
from django.conf import settings

from stocktracker.lib.catalogue import FOREIGN, INDEX, MARKET

from . import market, metrics
from .payloads import FeedData, Futures
from .rows import lower_keys, pick

log = logging.getLogger("apps.feed.ssi")

API = "api/v2/Market/"
REFRESH_MARGIN_S = 300  # refresh this long before the token's exp
PAGE_LIMIT = 10  # SSI serves pageIndex 1..10
BACKOFF_CAP_S = 60.0


class SSIError(Exception):
    """SSI could not answer. `retryable` says whether trying again later can help
    (a timeout can; a rejected consumer key cannot)."""

    def __init__(self, message, *, retryable, status=None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class _Retry(Exception):
    """A failed attempt that may succeed if repeated (internal)."""

    def __init__(self, message, *, wait=None, outcome="upstream_error"):
        super().__init__(message)
        self.wait = wait  # seconds the server asked for (Retry-After), else backoff
        self.outcome = outcome  # label of stocktracker_ssi_requests_total


class _AuthRejected(Exception):
    """SSI refused the bearer token (internal)."""


class RequestBudget:
    """At most `rate` requests per second: consecutive requests start at least
    1/rate seconds apart, and a 429's Retry-After pushes the next start later."""

    def __init__(self, rate, *, clock=time.monotonic):
        self.spacing = 1.0 / rate
        self.clock = clock
        self.next_at = 0.0
        self._lock = asyncio.Lock()

    async def take(self):
        async with self._lock:
            wait = self.next_at - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self.next_at = max(self.clock(), self.next_at) + self.spacing

    def defer(self, seconds):
        self.next_at = max(self.next_at, self.clock() + seconds)


def backoff_delay(attempt, base):
    """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
    return random.uniform(0, min(BACKOFF_CAP_S, base * 2**attempt))


def jwt_exp(token):
    """The `exp` claim (epoch seconds) of a JWT, read without verifying it; None if unreadable."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def retry_after_seconds(value, now=None):
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now or time.time()))


def ssi_date(day):
    return day.strftime("%d/%m/%Y")


def parse_ssi_date(text):
    try:
        return dt.datetime.strptime(str(text).strip(), "%d/%m/%Y").date()  # noqa: DTZ007 - a date, no time
    except ValueError:
        return None


class SSIClient:
    """One connection key's view of FCData v2. Not shared across event loops."""

    def __init__(
        self,
        *,
        base_url=None,
        consumer_id=None,
        consumer_secret=None,
        max_rps=None,
        timeout=None,
        retries=3,
        backoff_base=1.0,
        clock=time.time,
    ):
        self.consumer_id = settings.SSI_CONSUMER_ID if consumer_id is None else consumer_id
        self.consumer_secret = settings.SSI_CONSUMER_SECRET if consumer_secret is None else consumer_secret
        base_url = (base_url or settings.SSI_BASE_URL).rstrip("/") + "/"
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout or settings.SSI_TIMEOUT,
            headers={"Accept": "application/json"},
        )
        self.budget = RequestBudget(max_rps or settings.SSI_MAX_RPS)
        self.retries = retries
        self.backoff_base = backoff_base
        self.clock = clock
        self.token = None
        self.refresh_at = 0.0
        self.expires_at = 0.0  # the token's exp (on `clock`)
        self.fetched_at = -float("inf")
        self.requests = 0  # HTTP requests sent, token requests included
        self._token_lock = asyncio.Lock()  # REST and the hub's links share one token

    async def aclose(self):
        await self.http.aclose()

    # --- token -------------------------------------------------------------------

    async def access_token(self, *, force=False):
        if self.token and not force and self.clock() < self.refresh_at:
            return self.token
        held = self.token
        async with self._token_lock:
            if self.token and self.token != held and self.clock() < self.refresh_at:
                return self.token  # another caller refreshed it meanwhile
            return await self._fetch_token()

    async def _fetch_token(self):
        for _ in range(2):  # a token that is already expired on arrival is fetched once more
            body = await self._call(
                "POST",
                "AccessToken",
                json={"consumerID": self.consumer_id, "consumerSecret": self.consumer_secret},
                auth=False,
            )
            data = body.get("data")
            token = data.get("accessToken") if isinstance(data, dict) else None
            if not isinstance(token, str) or not token:
                raise SSIError(f"SSI access token refused: {body.get('message') or 'no token'}", retryable=False)
            now = self.clock()
            exp = jwt_exp(token) or now + 1800  # unreadable exp: assume half an hour
            self.token = token
            self.expires_at, self.fetched_at = exp, now
            self.refresh_at = exp - min(REFRESH_MARGIN_S, max(0.0, (exp - now) / 2))
            if exp > now:
                break
            log.warning("SSI issued an access token that is already expired; asking again")
        return self.token

    # --- requests ----------------------------------------------------------------

    async def get(self, name, params):
        """GET api/v2/Market/<name>: the JSON body of a successful answer."""
        return await self._call("GET", name, params=params, auth=True)

    async def _call(self, method, name, *, params=None, json=None, auth):
        attempt = 0
        refreshed = False
        while True:
            try:
                headers = {"Authorization": f"Bearer {await self.access_token()}"} if auth else None
                return await self._attempt(method, API + name, params=params, json=json, headers=headers)
            except _AuthRejected as exc:
                if not auth:
                    raise SSIError(f"SSI rejected the consumer key: {exc}", retryable=False, status=401) from None
                if refreshed:
                    raise SSIError(f"SSI rejected a fresh access token: {exc}", retryable=False, status=401) from None
                refreshed = True
                log.info("SSI refused the access token (%s); refreshing it once", exc)
                await self.access_token(force=True)
            except _Retry as exc:
                attempt += 1
                if attempt > self.retries:
                    raise SSIError(f"SSI {name}: {exc}", retryable=True) from None
                if exc.wait is not None:
                    self.budget.defer(exc.wait)  # the budget sleeps it off before the next request
                    log.warning("SSI %s: %s; retrying after %.1f s", name, exc, exc.wait)
                else:
                    delay = backoff_delay(attempt, self.backoff_base)
                    log.warning("SSI %s: %s; retrying in %.2f s (attempt %d)", name, exc, delay, attempt)
                    await asyncio.sleep(delay)

    async def _attempt(self, method, path, *, params, json, headers):
        await self.budget.take()
        self.requests += 1
        endpoint = path.rstrip("/").rsplit("/", 1)[-1]
        started = time.monotonic()
        outcome = "error"
        try:
            body = await self._request(method, path, params=params, json=json, headers=headers)
            outcome = "ok"
            return body
        except _Retry as exc:
            outcome = exc.outcome
            raise
        except _AuthRejected:
            outcome = "auth_rejected"
            raise
        except SSIError:
            outcome = "refused"
            raise
        finally:
            metrics.SSI_REQUESTS.labels(endpoint, outcome).inc()
            metrics.SSI_LATENCY.labels(endpoint).observe(time.monotonic() - started)

    async def _request(self, method, path, *, params, json, headers):
        try:
            response = await self.http.request(method, path, params=params, json=json, headers=headers)
        except httpx.TimeoutException:
            raise _Retry("timed out", outcome="timeout") from None
        except httpx.TransportError as exc:
            raise _Retry(f"transport error: {type(exc).__name__}", outcome="transport_error") from None
        status = response.status_code
        if status == 429:
            wait = retry_after_seconds(response.headers.get("retry-after")) or 1.0
            raise _Retry("HTTP 429", wait=wait, outcome="throttled")
        if status >= 500:
            raise _Retry(f"HTTP {status}", outcome="server_error")
        if status in (401, 403):
            raise _AuthRejected(f"HTTP {status}")
        if status >= 400:
            raise SSIError(f"SSI answered HTTP {status}", retryable=False, status=status)
        try:
            body = response.json()
        except ValueError:
            raise _Retry("answer is not JSON", outcome="bad_answer") from None
        if not isinstance(body, dict):
            raise _Retry("answer is not a JSON object", outcome="bad_answer")
        return self._check(body)

    @staticmethod
    def _check(body):
        """Errors hide in HTTP 200 bodies: read `status` (int or string) and `message`."""
        fields = lower_keys(body)
        status = fields.get("status")
        message = str(fields.get("message") or "")
        if isinstance(status, str) and status.strip().isdigit():
            status = int(status)
        if status in (200, None) or (isinstance(status, str) and status.lower() in ("success", "nodatafound")):
            body.setdefault("data", fields.get("data"))
            return body
        if status == 401 or (isinstance(status, str) and status.lower() == "unauthorized"):
            raise _AuthRejected(message or "401")
        if "quota exceeded" in message.lower() or status == 429:
            raise _Retry(message or "quota exceeded", wait=1.0, outcome="throttled")
        if isinstance(status, int) and status >= 500:
            raise _Retry(f"status {status}: {message}")
        raise SSIError(f"SSI refused the request: {status} {message}".strip(), retryable=False, status=status)

    async def _page(self, name, params, page, page_size):
        """(rows, totalRecord or None) of one page; the old spec's `dataList` is `data`."""
        body = await self.get(name, {**params, "pageIndex": page, "pageSize": page_size})
        fields = lower_keys(body)
        data = fields.get("data")
        if data is None or data == "":
            data = fields.get("datalist") or []
        if not isinstance(data, list):
            raise SSIError(f"SSI {name}: `data` is not a list", retryable=True)
        try:
            total = int(fields.get("totalrecord"))
        except (TypeError, ValueError):
            total = None
        return [row for row in data if isinstance(row, dict)], total

    async def get_list(self, name, params, *, page_size=100):
        """Every row of a list endpoint, following pages (at most 10, as SSI allows)."""
        rows = []
        for page in range(1, PAGE_LIMIT + 1):
            data, total = await self._page(name, params, page, page_size)
            rows.extend(data)
            if len(data) < page_size or len(rows) >= (len(rows) if total is None else total):
                break
        return rows

    async def get_nested(self, name, params, keys, *, page_size=100, key_of=("symbol", "stocksymbol")):
        """(outer rows, items) of an endpoint whose rows nest a list (`keys`: its
        spellings, e.g. RepeatedInfo), following pages. SSI pages the nested items
        (a page holds `page_size` of them); totalRecord counts them in one sample
        and the outer rows in another, so a full page always asks for the next,
        and a page that brings nothing new ends it."""
        outer, items, seen = [], [], set()
        for page in range(1, PAGE_LIMIT + 1):
            data, total = await self._page(name, params, page, page_size)
            found = []
            for row in data:
                fields = lower_keys(row)
                nested = next((fields[k] for k in keys if isinstance(fields.get(k), list)), None)
                if nested is None:
                    found.append(row)  # a flat row (the old spec's shape)
                    continue
                outer.append(row)
                found.extend(item for item in nested if isinstance(item, dict))
            new = []
            for item in found:
                key = pick(lower_keys(item), key_of)
                key = str(key).strip().upper() if key is not None else id(item)
                if key not in seen:
                    seen.add(key)
                    new.append(item)
            items.extend(new)
            if len(found) < page_size or not new or (total is not None and total >= len(found) and len(items) >= total):
                break
        return outer, items

    # --- one function per endpoint -----------------------------------------------

    async def index_components(self, index_code, *, page_size=100):
        """Constituent symbols of an index (nested `IndexComponent[].StockSymbol`)."""
        _, items = await self.get_nested(
            "IndexComponents", {"indexCode": index_code}, ("indexcomponent", "indexcomponentlist"), page_size=page_size
        )
        symbols = []
        for item in items:
            symbol = pick(lower_keys(item), ("stocksymbol", "symbol"))
            if symbol and str(symbol).strip().upper() not in symbols:
                symbols.append(str(symbol).strip().upper())
        return symbols

    async def securities_details(self, market_code, symbol=None, *, page_size=100):
        """Reference rows (`RepeatedInfo` items, flattened)."""
        params = {"market": market_code}
        if symbol:
            params["symbol"] = symbol
        _, items = await self.get_nested(
            "SecuritiesDetails", params, ("repeatedinfo", "repeatedinfolist"), page_size=page_size
        )
        return items

    async def securities(self, market_code, *, page_size=1000):
        """The symbols listed on a market: `Market`, `Symbol`, `StockName`, `StockEnName`."""
        return await self.get_list("Securities", {"market": market_code}, page_size=page_size)

    async def index_list(self, exchange, *, page_size=1000):
        """The indices of an exchange: `IndexCode`, `IndexName`, `Exchange`."""
        return await self.get_list("IndexList", {"exchange": exchange}, page_size=page_size)

    async def daily_stock_price(self, day, *, market_code=None, symbol=None, page_size=1000):
        params = {"fromDate": ssi_date(day), "toDate": ssi_date(day)}
        if market_code:
            params["market"] = market_code
        if symbol:
            params["symbol"] = symbol
        rows = await self.get_list("DailyStockPrice", params, page_size=page_size)
        if market_code:
            for row in rows:
                if pick(lower_keys(row), ("market", "marketid", "exchange")) is None:
                    row["Market"] = market_code  # the row does not say; the request did
        return rows

    async def daily_index(self, index_code, day):
        """The day's summary row of one index, or None."""
        rows = await self.get_list(
            "DailyIndex",
            {"indexId": index_code, "fromDate": ssi_date(day), "toDate": ssi_date(day)},
            page_size=10,
        )
        return rows[0] if rows else None

    async def intraday_ohlc(self, symbol, day, *, resolution=1):
        """The day's intraday bars of `symbol` (an index code is accepted), oldest first."""
        params = {
            "symbol": symbol,
            "fromDate": ssi_date(day),
            "toDate": ssi_date(day),
            "ascending": "true",
            "resolution": resolution,
        }
        return await self.get_list("IntradayOhlc", params, page_size=1000)


def pick_front_future(items, day):
    """(symbol, expiry) of the VN30 future with the nearest last trading day >= `day`."""
    best = None
    for item in items:
        fields = lower_keys(item)
        symbol = str(fields.get("symbol") or "").strip().upper()
        parsed = market.parse_futures_code(symbol)
        if parsed is None:
            continue
        underlying = str(fields.get("underlying") or "VN30").upper()
        if "VN30" not in underlying:
            continue
        expiry = parse_ssi_date(fields.get("lasttradingdate") or "") or market.futures_expiry(*parsed)
        if expiry >= day and (best is None or expiry < best[1]):
            best = (symbol, expiry)
    return best


class SSISource:
    """FEED_SOURCE=ssi: the endpoints of "Polling design notes" in the reference.

    Per cycle, only what subscribed streams need: market = HOSE board + the
    future + VN30 (for the basis); foreign = HOSE board; index = five indices.
    The VN30 basket and the front-month contract are resolved once a day.
    """

    name = "ssi"
    simulated = False

    def __init__(self, client=None, *, now=market.vn_now, extra=None, futures_override=None):
        self.client = client or SSIClient()
        self.now = now
        self.extra = list(settings.EXTRA_SYMBOLS if extra is None else extra)
        self.override = settings.FUTURES_OVERRIDE if futures_override is None else futures_override
        self._day = None  # (trading date, basket, Futures without a row)
        self._off_hose = None  # (trading date, extra symbols missing from that day's HOSE board)
        self._extra_markets = (None, {})  # (trading date, {extra symbol: its exchange})
        self._closed_data = None  # (trading date, needs, FeedData) fetched after the close

    @property
    def requests(self):
        return self.client.requests

    async def aclose(self):
        await self.client.aclose()

    async def prepare(self):
        """Hold what a first subscriber would otherwise wait for, none of it a
        data call: the access token (renewed before it expires) and the day's
        reference data (once a trading day). Free when both are held."""
        await self.client.access_token()
        await self.resolve_day(market.trading_date(self.now()))

    async def resolve_day(self, day):
        if self._day and self._day[0] == day:
            return self._day[1], self._day[2]
        basket = await self.client.index_components("VN30")
        if not basket:
            raise SSIError("SSI returned an empty VN30 basket", retryable=True)
        if self.override:
            symbol, alias, expiry = market.futures_contract(day, self.override)
        else:
            found = pick_front_future(await self.client.securities_details("DER"), day)
            if found:
                symbol, expiry = found
                parsed = market.parse_futures_code(symbol)
                alias = market.legacy_futures_code(*parsed) if parsed else symbol
            else:
                symbol, alias, expiry = market.futures_contract(day)
                log.warning("no VN30 future listed in SecuritiesDetails(DER); using %s by the calendar", symbol)
        contract = Futures(symbol=symbol, alias=alias, expiry=expiry, row=None)
        self._day = (day, basket, contract)
        log.info("resolved %s: VN30 basket of %d, future %s (%s)", day, len(basket), symbol, alias)
        return basket, contract

    async def fetch(self, needs):
        now = self.now()
        day = market.trading_date(now)
        closed = self._closed_data
        if closed is not None and closed[0] == day and closed[1] >= set(needs) and not market.is_active(now):
            return closed[2]  # out of trading hours the board no longer moves: no data call
        data = await self._fetch(now, day, needs)
        # Taken out of trading hours, the day's data is final until the next session.
        self._closed_data = None if market.is_active(self.now()) else (day, frozenset(needs), data)
        return data

    async def _fetch(self, now, day, needs):
        basket, contract, stocks, futures, indices = [], None, [], None, {}
        if needs & {MARKET, FOREIGN}:
            basket, contract = await self.resolve_day(day)
            stocks = await self.client.daily_stock_price(day, market_code="HOSE")
            for symbol in self._extras_off_hose(day, stocks):  # one more request per symbol
                stocks.extend(await self._extra_rows(day, symbol))
        if MARKET in needs:
            rows = await self.client.daily_stock_price(day, market_code="DER", symbol=contract.symbol, page_size=10)
            match = [row for row in rows if str(pick(lower_keys(row), ("symbol",)) or "").upper() == contract.symbol]
            futures = Futures(contract.symbol, contract.alias, contract.expiry, (match or rows or [None])[0])
        codes = market.INDEX_CODES if INDEX in needs else ("VN30",) if MARKET in needs else ()
        for code in codes:
            row = await self.client.daily_index(code, day)
            if row is not None:
                indices[code] = row
        return FeedData(
            trading_date=day,
            phase=market.phase(now),
            source_ms=market.epoch_ms(now),
            simulated=False,
            basket=basket,
            extra=self.extra,
            stocks=stocks,
            futures=futures,
            indices=indices,
        )

    async def _extra_rows(self, day, symbol):
        """The rows of an extra off the HOSE board, marked with its exchange:
        DailyStockPrice rows do not say it, so ask HNX, then UPCOM, and keep the
        one that answered for the day (one request a cycle after that)."""
        if self._extra_markets[0] != day:
            self._extra_markets = (day, {})
        known = self._extra_markets[1].get(symbol)
        for market_code in (known,) if known else ("HNX", "UPCOM"):
            rows = await self.client.daily_stock_price(day, market_code=market_code, symbol=symbol, page_size=10)
            if rows:
                self._extra_markets[1][symbol] = market_code
                return rows
        return []

    def _extras_off_hose(self, day, hose_rows):
        """EXTRA_SYMBOLS that the HOSE board of `day` lacks (HNX, UPCOM): the only
        ones that need a request of their own. Decided once a day, from the first
        non-empty HOSE board of the day (an empty one, e.g. before SSI has the
        day's rows, decides nothing and every extra is asked for)."""
        if not self.extra:
            return []
        if self._off_hose and self._off_hose[0] == day:
            return self._off_hose[1]
        have = {str(pick(lower_keys(row), ("symbol",)) or "").strip().upper() for row in hose_rows}
        off = [symbol for symbol in self.extra if symbol not in have]
        if have:
            self._off_hose = (day, off)
            log.info("extra symbols off HOSE on %s: %s", day, ", ".join(off) or "none")
        return off

    def requests_per_cycle(self):
        """Requests of a full cycle; every extra counts until the day's HOSE board says which are off it."""
        day = self._off_hose[0] if self._off_hose else None
        extras = self._off_hose[1] if day is not None and day == market.trading_date(self.now()) else self.extra
        return 2 + len(market.INDEX_CODES) + len(extras)

    def slow_after(self):
        """A normal cycle takes one budget slot per request; only more than that is slow."""
        return self.requests_per_cycle() * self.client.budget.spacing + 0.5

    def interval(self):
        """Trading hours: FEED_INTERVAL (default 10 s), never faster than one
        cycle's requests allow within SSI_MAX_RPS; otherwise FEED_IDLE_INTERVAL."""
        floor = self.requests_per_cycle() * self.client.budget.spacing
        if market.is_active(self.now()):
            return max(settings.FEED_INTERVAL or 10.0, floor)
        return max(settings.FEED_IDLE_INTERVAL, floor)
