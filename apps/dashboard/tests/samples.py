"""Snapshot payloads in the feed's shapes, with stocks in every colour band."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from apps.streams.publish import publish_snapshot

EPOCH = "2026-11-27"


def stock(symbol, ref, last, *, band_pct=7, **extra):
    # HOSE band on a 100 VND tick: the ceiling rounds down, the floor up.
    ceiling = ref * (100 + band_pct) // 100 // 100 * 100
    floor = -(-(ref * (100 - band_pct) // 100) // 100) * 100
    traded = last if last is not None else ref
    row = {
        "symbol": symbol,
        "exchange": "HOSE",
        "ref": ref,
        "ceiling": ceiling,
        "floor": floor,
        "open": ref,
        "high": max(ref, traded),
        "low": min(ref, traded),
        "last": last,
        "change": traded - ref,
        "change_pct": round((traded - ref) / ref * 100, 2),
        "avg": ref,
        "volume": 1_234_500,
        "value": 1_234_500 * traded,
        "foreign_buy_volume": 10_000,
        "foreign_sell_volume": 25_000,
        "foreign_room": 123_456_789,
        "room_total": 400_000_000,
        # Three levels each side around the last price, on the 100 VND tick, within the band.
        "bids": [[p, 10_000 * (n + 1)] for n, p in enumerate(range(traded, traded - 300, -100)) if p >= floor],
        "asks": [[p, 5_000 * (n + 1)] for n, p in enumerate(range(traded + 100, traded + 400, 100)) if p <= ceiling],
        "last_volume": 1_200,
        "active_buy_volume": 600_000,
        "active_sell_volume": 500_000,
        "session": "LO",
        "status": "N",
    }
    row.update(extra)
    return row


def market(**overrides):
    stocks = [
        stock("ACB", 22900, 24500),  # ceiling 24500
        stock("FPT", 100000, 93000),  # floor 93000
        stock("HPG", 26000, 26000),  # reference
        stock("VCB", 60000, 61200),  # up
        stock("VNM", 70000, 68500),  # down
        stock("SSI", 30000, None, high=None, low=None, change=None, change_pct=None),  # no trade yet
    ]
    data = {
        "phase": "continuous",
        "trading_date": EPOCH,
        "stocks": stocks,
        "futures": {
            "symbol": "VN30F2612",
            "alias": "VN30F1M",
            "expiry": "2026-12-17",
            "ref": 1350.0,
            "ceiling": 1444.5,
            "floor": 1255.5,
            "open": 1351.0,
            "high": 1362.0,
            "low": 1348.2,
            "last": 1359.4,
            "change": 9.4,
            "change_pct": 0.7,
            "volume": 152340,
            "vn30": 1356.12,
            "basis": 3.28,
            "bids": [[1359.3, 12], [1359.2, 40], [1359.1, 7]],
            "asks": [[1359.4, 5], [1359.5, 22], [1359.6, 31]],
            "last_volume": 3,
            "active_buy_volume": 80_000,
            "active_sell_volume": 70_000,
            "session": "LO",
            "status": "N",
        },
    }
    data.update(overrides)
    return data


def foreign():
    totals = {
        "buy_volume": 5_000_000,
        "sell_volume": 3_000_000,
        "net_volume": 2_000_000,
        "buy_value": 250_000_000_000,
        "sell_value": 150_000_000_000,
        "net_value": 100_000_000_000,
    }
    return {
        "trading_date": EPOCH,
        "vn30": totals,
        "board": totals,
        "top_buyers": [
            {"symbol": "FPT", "net_volume": 500_000, "net_value": 60_000_000_000},
            {"symbol": "HPG", "net_volume": 400_000, "net_value": 20_000_000_000},
        ],
        "top_sellers": [{"symbol": "VNM", "net_volume": -300_000, "net_value": -30_000_000_000}],
        "rows": [],
        "speed": {"window_s": 60, "buy_value_per_min": 2e9, "sell_value_per_min": 1e9, "net_value_per_min": 1e9},
    }


def index(value=1280.55):
    now = int(time.time() * 1000)
    codes = [
        ("VNINDEX", "VN-Index"),
        ("VN30", "VN30"),
        ("HNXIndex", "HNX-Index"),
        ("HNX30", "HNX30"),
        ("HNXUpcomIndex", "UPCoM"),
    ]
    return {
        "trading_date": EPOCH,
        "indices": [
            {
                "code": code,
                "name": name,
                "value": value + i,
                "prior": value - 5,
                "change": 5.0,
                "change_pct": 0.39,
                "volume": 512_000_000,
                "value_traded": 12_345_000_000_000,
                "advances": 200,
                "declines": 150,
                "unchanged": 50,
                "ceilings": 4,
                "floors": 2,
                "points": [[now - 60_000 * k, value - k * 0.5] for k in range(10, -1, -1)],
            }
            for i, (code, name) in enumerate(codes)
        ],
    }


def run_async(fn, *args, **kwargs):
    """Run a coroutine function to completion from sync test code, on a thread
    of its own (Playwright's sync API keeps a loop running on this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, fn(*args, **kwargs)).result()


def publish(stream, data, simulated=True):
    return run_async(publish_snapshot, stream, data, day=EPOCH, source_ms=int(time.time() * 1000), simulated=simulated)


def publish_all(simulated=True, **market_overrides):
    """Publish one snapshot of each stream, as the feed would."""
    for stream, data in (("market", market(**market_overrides)), ("foreign", foreign()), ("index", index())):
        publish(stream, data, simulated=simulated)
