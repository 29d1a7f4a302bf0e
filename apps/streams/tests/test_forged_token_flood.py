"""2,000 forged (well-formed, checksummed) tokens from one address in under a
minute, against a real daphne: the server stays healthy, a legitimate client
behind the same address keeps connecting fast, and the forgeries cost a
bounded number of database lookups.

Lookups are counted by PostgreSQL itself: the scans of the token table in
`pg_stat_user_tables` (each token lookup is one), read before and after.
"""

import asyncio
import json
import time
import urllib.request

import psycopg
import pytest
from django.db import connection

from apps.accounts import tokens
from apps.accounts.models import ApiToken

from .clients import close_code, connect, recv_json

pytestmark = pytest.mark.e2e

FORGED = 2000
RATE = 50  # forged connects per second: 2,000 in 40 s
BUDGET = 30  # WS_AUTH_FAILURES_PER_MINUTE


def _token_table_scans():
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname=settings["NAME"], autocommit=True
    ) as conn:
        row = conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables"
            " WHERE relname = 'accounts_apitoken'"
        ).fetchone()
    return row[0]


def test_a_flood_of_forged_tokens_is_cut_off_before_the_database_and_a_real_client_stays_fast(processes, owner):
    _, raw = ApiToken.issue(owner, label="real")
    web = processes.daphne(WS_AUTH_FAILURES_PER_MINUTE=str(BUDGET))
    url = f"{web.ws_url}/ws/market"
    codes = {}
    connect_times = []

    async def forged_one(token):
        try:
            async with connect(url, token) as ws:
                code, _ = await close_code(ws, 10)
        except Exception as exc:  # noqa: BLE001 - a failed handshake is a finding, counted by name
            code = type(exc).__name__
        codes[code] = codes.get(code, 0) + 1

    async def flood():
        tasks = []
        started = time.monotonic()
        for i in range(FORGED):
            await asyncio.sleep(max(0.0, started + i / RATE - time.monotonic()))
            tasks.append(asyncio.ensure_future(forged_one(tokens.generate())))
        await asyncio.gather(*tasks)

    async def legitimate(stop):
        while not stop.is_set():
            started = time.monotonic()
            async with connect(url, raw) as ws:
                first = await recv_json(ws, 10)
                assert first["type"] == "welcome", first
                connect_times.append(time.monotonic() - started)
            await asyncio.sleep(0.2)

    async def main():
        # The real token is known to the process before the flood starts (its
        # first use creates its generation; the second caches it).
        for _ in range(2):
            async with connect(url, raw) as ws:
                assert (await recv_json(ws, 10))["type"] == "welcome"
        await asyncio.sleep(1.5)  # let PostgreSQL publish the counters of that lookup
        before = await asyncio.to_thread(_token_table_scans)
        stop = asyncio.Event()
        client = asyncio.ensure_future(legitimate(stop))
        started = time.monotonic()
        await flood()
        took = time.monotonic() - started
        stop.set()
        await client
        await asyncio.sleep(1.5)
        return before, await asyncio.to_thread(_token_table_scans), took

    before, after, took = asyncio.run(main())
    with urllib.request.urlopen(f"{web.http_url}/healthz", timeout=5) as response:  # noqa: S310 - loopback
        assert response.status == 200
    lookups = after - before
    connect_times.sort()
    p99 = connect_times[int(len(connect_times) * 0.99) - 1] if connect_times else None
    print(
        json.dumps(
            {
                "forged": FORGED,
                "seconds": round(took, 1),
                "close codes": codes,
                "token-table lookups": lookups,
                "legit connects": len(connect_times),
                "legit p50 s": round(connect_times[len(connect_times) // 2], 3),
                "legit p99 s": round(p99, 3),
            }
        )
    )
    assert took < 60
    assert set(codes) <= {4001, 4008}, codes
    assert codes.get(4008, 0) >= FORGED - 2 * BUDGET, codes
    # At most the budget per minute window (the flood may straddle two), plus the real client's own.
    assert lookups <= 2 * BUDGET + 5, f"{lookups} token lookups for {FORGED} forged tokens"
    assert len(connect_times) >= 50
    assert p99 < 1.0, f"legitimate connect p99 {p99:.3f} s"
