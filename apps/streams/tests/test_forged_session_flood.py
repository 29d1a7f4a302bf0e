"""2,000 forged session cookies from one address in 40 s, against a real
daphne: a cookie handshake signs in like a token, so the forgeries cost at
most the address's failed sign-in budget in session lookups (per minute
window; the flood may straddle two), the rest are refused 4101 with a retry
hint before any database work, and a real dashboard session behind the same
address keeps connecting fast. A cross-site page's cookie costs nothing.

Lookups are counted by PostgreSQL itself: the test runs its own cluster with
every statement logged, and counts the session-table reads by the key they
asked for (the real session's, or any other). The table scan counters of
`pg_stat_user_tables` cannot tell them apart, and count a few scans more than
statements.
"""

import asyncio
import json
import re
import secrets
import shutil
import string
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from .clients import close_code, recv_json
from .test_database_outage import _manage, _resume, _services

pytestmark = pytest.mark.e2e

FORGED = 2000
RATE = 50  # forged connects per second: 2,000 in 40 s
BUDGET = 30  # WS_AUTH_FAILURES_PER_MINUTE, its default
# A read of the session table by key, whatever else its WHERE says (Django's own adds the expiry).
SESSION_READ = re.compile(r'FROM "django_session" WHERE [^\n]*?"django_session"\."session_key" = \'([a-z0-9]+)\'')

SETUP = """
from django.contrib.auth import get_user_model
from django.test import Client
user = get_user_model().objects.create_user("analyst", "analyst@example.com", "pw-not-used-0123")
client = Client()
client.force_login(user)
print(client.cookies["sessionid"].value)
"""


@pytest.fixture
def logged_postgres():
    """A PostgreSQL of the test's own that logs every statement: (url, its log file)."""
    services = _services()
    tmp = tempfile.mkdtemp(prefix="stocktracker-pg-flood-")
    procs = []
    try:
        url = services.start_postgres(tmp, procs)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            conn.execute("SELECT pg_reload_conf()")
        yield url, Path(tmp) / "postgres.log"
    finally:
        for proc, name in procs:
            _resume(proc)
            services.stop(proc, name)
        shutil.rmtree(tmp, ignore_errors=True)


def _session_reads(log_path, start):
    """{key: session-table reads} logged after byte `start` of the log."""
    with open(log_path, "rb") as log:
        log.seek(start)
        text = log.read().decode("utf-8", "replace")
    reads = {}
    for key in SESSION_READ.findall(text):
        reads[key] = reads.get(key, 0) + 1
    return reads


def _forged_key():
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(32))


def test_a_flood_of_forged_session_cookies_costs_the_budget_and_a_real_session_stays_fast(processes, logged_postgres):
    db_url, pg_log = logged_postgres
    env = processes.env(DATABASE_URL=db_url)
    _manage(env, "migrate", "--no-input", "-v", "0")
    real = _manage(env, "shell", "-c", SETUP).strip().splitlines()[-1]
    web = processes.daphne(DATABASE_URL=db_url)  # WS_AUTH_FAILURES_PER_MINUTE at its default
    url, origin = f"{web.ws_url}/ws/market", web.http_url
    codes, connect_times = {}, []

    def dial(key, page=origin):
        return websockets.connect(
            url, additional_headers={"Cookie": f"sessionid={key}", "Origin": page}, open_timeout=10
        )

    async def forged_one(http, rest):
        try:
            if rest:  # the REST snapshot's cookie sign-in, on the same budget
                cookie = {"Cookie": f"sessionid={_forged_key()}"}
                response = await http.get("/api/v1/snapshot/market", headers=cookie)
                codes[f"http {response.status_code}"] = codes.get(f"http {response.status_code}", 0) + 1
                if response.status_code == 429:
                    assert 1 <= int(response.headers["Retry-After"]) <= 60, response.headers
                return
            async with dial(_forged_key()) as ws:
                code, frames = await close_code(ws, 10)
            key = (code, frames[-1].get("code") if frames else None)
            if code == 4101:
                assert 1 <= frames[-1]["retry_after"] <= 60, frames
        except ConnectionClosed as exc:
            key = (exc.rcvd.code if exc.rcvd else None, None)
        except Exception as exc:  # noqa: BLE001 - a failed handshake is a finding, counted by name
            key = (type(exc).__name__, None)
        codes[key] = codes.get(key, 0) + 1

    async def flood():
        tasks, started = [], time.monotonic()
        async with httpx.AsyncClient(base_url=web.http_url, timeout=10) as http:
            for i in range(FORGED):
                await asyncio.sleep(max(0.0, started + i / RATE - time.monotonic()))
                tasks.append(asyncio.ensure_future(forged_one(http, rest=i % 10 == 9)))
            await asyncio.gather(*tasks)

    async def legitimate(stop):
        while not stop.is_set():
            started = time.monotonic()
            async with dial(real) as ws:
                first = await recv_json(ws, 10)
                assert first["type"] == "welcome", first
                connect_times.append(time.monotonic() - started)
            await asyncio.sleep(0.2)

    async def main():
        async with dial(real) as ws:  # the dashboard signs in before the flood
            assert (await recv_json(ws, 10))["type"] == "welcome"
        start = pg_log.stat().st_size
        # A cross-site page carrying a cookie is refused before any database work.
        async with dial(_forged_key(), page="https://evil.example") as ws:
            cross_site = await close_code(ws, 10)
        stop = asyncio.Event()
        client = asyncio.ensure_future(legitimate(stop))
        started = time.monotonic()
        await flood()
        took = time.monotonic() - started
        stop.set()
        await client
        await asyncio.sleep(0.5)  # the last statements reach the log
        return _session_reads(pg_log, start), took, cross_site

    reads, took, cross_site = asyncio.run(main())
    connect_times.sort()
    p99 = connect_times[int(len(connect_times) * 0.99) - 1]
    forged_reads = sum(n for key, n in reads.items() if key != real)
    print(
        json.dumps(
            {
                "forged": FORGED,
                "seconds": round(took, 1),
                "answers": {" ".join(map(str, key)) if isinstance(key, tuple) else key: n for key, n in codes.items()},
                "session reads of forged keys": forged_reads,
                "budget": BUDGET,
                "session reads of the real key": reads.get(real, 0),
                "real connects": len(connect_times),
                "legit p50 s": round(connect_times[len(connect_times) // 2], 3),
                "legit p99 s": round(p99, 3),
            }
        )
    )
    assert reads.get(real), "the statement log shows no session read (log_statement not in effect?)"
    assert took < 45
    assert cross_site[0] == 4003 and cross_site[1][-1]["code"] == "origin_forbidden", cross_site
    assert set(codes) <= {(4001, "signed_out"), (4101, "too_many_failures"), "http 401", "http 429"}, codes
    refused_unchecked = codes.get((4101, "too_many_failures"), 0) + codes.get("http 429", 0)
    assert refused_unchecked >= FORGED - 2 * BUDGET, codes
    assert codes.get((4101, "too_many_failures")) and codes.get("http 429"), f"sockets and REST share it: {codes}"
    assert forged_reads <= 2 * BUDGET, f"{forged_reads} session reads for {FORGED} forged cookies"
    assert len(connect_times) >= 50
    assert p99 < 1.0, f"legitimate connect p99 {p99:.3f} s"
