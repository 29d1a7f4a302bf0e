"""A fake SSI FastConnect Data server: real HTTP on 127.0.0.1, in a thread.

It serves the documented v2 shapes (numbers as strings, `status` as a string
on market endpoints and an int on AccessToken, nested IndexComponent and
RepeatedInfo), for a synthetic whole market (fake_market.py: Securities,
SecuritiesDetails, IndexList, IndexComponents, DailyStockPrice of every
listed instrument) whose simulated symbols move as the simulator moves them,
paged as SSI pages (the nested lists by their items), and can be told to fail
the next request(s) in each way SSI is known or expected to fail:

    server.fail("body401")      HTTP 200 + {"status": 401, "message": "Unauthorized"}
    server.fail("http401")      HTTP 401
    server.fail("429", retry_after=1)   HTTP 429 + Retry-After + the WebApiThrottle text
    server.fail("500")          HTTP 500
    server.fail("timeout", delay=2)     answers only after `delay` seconds
    server.fail("garbage")      HTTP 200 + a body that is not JSON
    server.fail("expired_jwt", on="token")  the next token is issued already expired
    server.fail("invalid_key", on="token")  {"message": "The connection is invalid", "status": 400}
"""

import base64
import datetime as dt
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from apps.feed import market
from apps.feed.simulator import Simulator

from .fake_market import SyntheticMarket

CONSUMER_ID = "fake-consumer-id"
CONSUMER_SECRET = "fake-consumer-secret"
DATA_FAILURES = ("body401", "http401", "429", "500", "timeout", "garbage")
TOKEN_FAILURES = ("expired_jwt", "invalid_key", "500", "timeout", "garbage", "429")


def make_jwt(exp, subject=CONSUMER_ID):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"sub": subject, "exp": int(exp), "jti": uuid.uuid4().hex}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.ZmFrZS1zaWduYXR1cmU"


def ssi_text(value, decimals=None):
    """SSI-style string numbers: "28600", "663258204999.9850"; unknown -> null."""
    if value is None:
        return None
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return str(value)


_VALUE_KEYS = {"TotalMatchVal", "TotalTradedValue", "ForeignBuyValTotal", "ForeignSellValTotal", "NetBuySellVal"}


# The keys of a DailyStockPrice row (reference, section 3.8): no market, no
# order book, no last trade; the simulator's stream fields are left out.
DAILY_STOCK_PRICE_KEYS = frozenset(
    "TradingDate PriceChange PerPriceChange CeilingPrice FloorPrice RefPrice OpenPrice HighestPrice LowestPrice "
    "ClosePrice AveragePrice ClosePriceAdjusted TotalMatchVol TotalMatchVal TotalDealVal TotalDealVol "
    "ForeignBuyVolTotal ForeignCurrentRoom ForeignSellVolTotal ForeignBuyValTotal ForeignSellValTotal "
    "TotalBuyTrade TotalBuyTradeVol TotalSellTrade TotalSellTradeVol NetBuySellVol NetBuySellVal TotalTradedVol "
    "TotalTradedValue Symbol Time".split()
)


def stock_row_text(row):
    out = {}
    for key, value in row.items():
        if key not in DAILY_STOCK_PRICE_KEYS:
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = ssi_text(value, 4 if key in _VALUE_KEYS else None)
        else:
            out[key] = value
    return out


class Request:
    def __init__(self, method, name, params, headers, at):
        self.method, self.name, self.params, self.headers, self.at = method, name, params, headers, at

    def __repr__(self):
        return f"<{self.method} {self.name} {self.params}>"


class FakeSSI:
    def __init__(self, *, seed=7, now=market.vn_now, token_ttl=8 * 3600, board_padding=0):
        self.now = now
        self.token_ttl = token_ttl
        self.board_padding = board_padding  # extra HOSE rows (to exercise paging)
        self.simulator = Simulator(seed)
        self.requests = []
        self.valid_tokens = set()
        self.futures_listed = True
        self.reference_down = False  # the reference endpoints (Securities, Index*) answer 500
        self._market = None
        self._failures = []  # [kind, on, options]
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    # --- control -------------------------------------------------------------------

    def fail(self, kind, times=1, on="data", **options):
        assert kind in (TOKEN_FAILURES if on == "token" else DATA_FAILURES), kind
        with self._lock:
            for _ in range(times):
                self._failures.append((kind, on, options))

    def revoke_tokens(self):
        with self._lock:
            self.valid_tokens.clear()

    def calls(self, name=None):
        return [r for r in self.requests if name is None or r.name.lower() == name.lower()]

    def reset_log(self):
        self.requests.clear()

    @property
    def url(self):
        host, port = self._server.server_address
        return f"http://{host}:{port}/"

    def start(self):
        self._snapshot()  # simulate the morning now, not inside the first request's timeout
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- behaviour -----------------------------------------------------------------

    def _take_failure(self, on):
        with self._lock:
            for index, (kind, where, options) in enumerate(self._failures):
                if where == on:
                    del self._failures[index]
                    return kind, options
        return None, {}

    def handle(self, method, path, query, headers, body):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        params = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            params[key.lower().removeprefix("lookuprequest.")] = value
        self.requests.append(Request(method, name, params, headers, time.monotonic()))
        on = "token" if name.lower() == "accesstoken" else "data"
        kind, options = self._take_failure(on)
        if kind == "timeout":
            time.sleep(options.get("delay", 2.0))
        elif kind == "500":
            return 500, {}, b"<html>Internal Server Error</html>"
        elif kind == "429":
            wait = str(options.get("retry_after", 1))
            text = b'{"Message":"API calls quota exceeded! maximum admitted 1 per 1s."}'
            return 429, {"Retry-After": wait}, text
        elif kind == "garbage":
            return 200, {}, b"<!DOCTYPE html><title>Maintenance</title>{not json"
        elif kind == "http401":
            return 401, {}, b'{"message":"Unauthorized"}'
        elif kind == "body401":
            return 200, {}, _json({"status": 401, "message": "Unauthorized", "data": None})
        if on == "token":
            return self._token(body, kind)
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not token:
            return 200, {}, _json({"message": "Missing Authorization header", "status": 401})
        with self._lock:
            valid = token in self.valid_tokens
        if not valid or (_exp(token) or 0) <= time.time():
            return 200, {}, _json({"status": 401, "message": "Unauthorized", "data": None})
        handler = getattr(self, f"_{name.lower()}", None)
        if handler is None or method != "GET":
            return 404, {}, b'{"Message":"No HTTP resource was found that matches the request URI."}'
        try:
            return 200, {}, _json(handler(params))
        except _Answer as answer:
            return answer.status, {}, answer.body

    def _token(self, body, kind):
        try:
            credentials = json.loads(body or b"{}")
        except ValueError:
            credentials = {}
        if kind == "invalid_key" or (
            credentials.get("consumerID") != CONSUMER_ID or credentials.get("consumerSecret") != CONSUMER_SECRET
        ):
            return 200, {}, _json({"message": "The connection is invalid", "status": 400, "data": None})
        exp = time.time() - 60 if kind == "expired_jwt" else time.time() + self.token_ttl
        token = make_jwt(exp)
        with self._lock:
            self.valid_tokens.add(token)
        return 200, {}, _json({"message": "Success", "status": 200, "data": {"accessToken": token}})

    # --- endpoints -------------------------------------------------------------------

    def _snapshot(self):
        with self._lock:
            return self.simulator.snapshot(self.now())

    @staticmethod
    def _page(rows, params, default_size=10):
        size = int(params.get("pagesize") or default_size)
        index = int(params.get("pageindex") or 1)
        page = rows[(index - 1) * size : index * size]
        status = "Success" if rows else "NoDataFound"
        message = "Success" if rows else "No data found"
        return {"data": page, "message": message, "status": status, "totalRecord": len(rows)}

    @staticmethod
    def _nested_page(row, key, items, params, default_size=10):
        """One outer row holding a page of `items` (SSI pages a nested list by its
        items; totalRecord counts them, as in the spec's IndexComponents sample)."""
        page = FakeSSI._page(items, params, default_size)
        page["data"] = [{**row, key: page["data"]}] if page["data"] else []
        return page

    def _same_day(self, data, params):
        wanted = params.get("fromdate")
        return not wanted or wanted == data.trading_date.strftime("%d/%m/%Y")

    @property
    def market(self):
        """The listing of the current trading day (made once a day)."""
        today = market.trading_date(self.now())
        with self._lock:
            if self._market is None or self._market.today != today:
                self._market = SyntheticMarket(today)
            return self._market

    def _reference(self):
        if self.reference_down:
            raise _Answer(500, b"<html>Service Unavailable</html>")

    def _securities(self, params):
        self._reference()
        return self._page(self.market.securities(params.get("market", "").upper()), params)

    def _indexlist(self, params):
        self._reference()
        return self._page(self.market.index_list(params.get("exchange", "")), params)

    def _indexcomponents(self, params):
        self._reference()
        code = params.get("indexcode", "")
        found = next(((c, i) for c, i in self.market.indices.items() if c.lower() == code.lower()), None)
        if found is None:
            return self._page([], params)
        code, (name, exchange, _, members) = found
        components = [{"Isin": s, "StockSymbol": s} for s in members]
        row = {"IndexCode": code, "IndexName": name, "Exchange": exchange, "TotalSymbolNo": str(len(members))}
        return self._nested_page(row, "IndexComponent", components, params)

    def _securitiesdetails(self, params):
        self._reference()
        wanted = params.get("market", "").upper()
        if wanted == "DER" and not self.futures_listed:
            return self._page([], params)
        items = self.market.details(wanted, params.get("symbol", "").upper())
        day = self.market.today.strftime("%d/%m/%Y")
        page = self._nested_page({"RType": "y", "ReportDate": day}, "RepeatedInfo", items, params)
        for row in page["data"]:
            row["TotalNoSym"] = str(len(row["RepeatedInfo"]))
        return page

    def _dailystockprice(self, params):
        data = self._snapshot()
        if not self._same_day(data, params):
            return self._page([], params)
        wanted_market = params.get("market", "").upper()
        symbol = params.get("symbol", "").upper()
        listing = self.market
        moving = {row["Symbol"]: row for row in data.stocks if row["Market"] == listing.markets.get(row["Symbol"])}
        moving[data.futures.row["Symbol"]] = data.futures.row
        rows = []
        for name, exchange in listing.markets.items():
            if (wanted_market and exchange != wanted_market) or (symbol and name != symbol):
                continue
            row = moving.get(name)
            rows.append(stock_row_text(row) if row is not None else listing.daily_row(name, data.trading_date))
        if wanted_market == "HOSE" and not symbol:
            template = rows[0]
            rows += [{**template, "Symbol": f"Z{n:03d}"} for n in range(self.board_padding)]
        return self._page(rows, params)

    def _dailyindex(self, params):
        data = self._snapshot()
        code = params.get("indexid", "")
        row = next((r for c, r in data.indices.items() if c.lower() == code.lower()), None)
        listed = next((c for c in self.market.indices if c.lower() == code.lower()), None)
        if row is None and listed is not None:
            row = self.market.index_row(listed, data.trading_date)
        if row is None or not self._same_day(data, params):
            return self._page([], params)
        text = {key: (ssi_text(v) if isinstance(v, int | float) else v) for key, v in row.items()}
        return self._page([text], params)

    def _intradayohlc(self, params):
        """1-minute bars from 09:00 to now around the symbol's current value (indices only)."""
        data = self._snapshot()
        code = params.get("symbol", "")
        row = next((r for c, r in data.indices.items() if c.lower() == code.lower()), None)
        if row is None or not self._same_day(data, params):
            return self._page([], params)
        value = float(row["IndexValue"])
        now = self.now().astimezone(market.VN)
        moment = dt.datetime.combine(data.trading_date, dt.time(9), tzinfo=market.VN)
        bars = []
        while moment <= now and moment.time() <= dt.time(14, 45):
            if not dt.time(11, 30) <= moment.time() < dt.time(13):
                close = f"{value - len(bars) % 7 * 0.25:.2f}"
                bars.append(
                    {
                        "Symbol": code,
                        "Value": close,
                        "TradingDate": data.trading_date.strftime("%d/%m/%Y"),
                        "Time": (moment + dt.timedelta(seconds=59)).strftime("%H:%M:%S"),
                        "Open": close,
                        "High": close,
                        "Low": close,
                        "Close": close,
                        "Volume": "1000",
                    }
                )
            moment += dt.timedelta(minutes=1)
        return self._page(bars, params)


class _Answer(Exception):
    def __init__(self, status, body):
        super().__init__(status)
        self.status, self.body = status, body


def _json(obj):
    return json.dumps(obj).encode()


def _exp(token):
    from apps.feed.ssi import jwt_exp

    return jwt_exp(token)


class _Handler(BaseHTTPRequestHandler):
    fake = None
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def _serve(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, extra, payload = self.fake.handle(self.command, url.path, url.query, headers, body)
        except Exception as exc:  # noqa: BLE001 - a bug in the fake answers 500, visibly
            status, extra, payload = 500, {}, f"fake SSI error: {exc!r}".encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    do_GET = do_POST = _serve

    def log_message(self, format, *args):
        pass
