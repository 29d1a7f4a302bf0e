"""A PostgreSQL connection that goes silent mid-query cannot stall a web process.

Each test catches a token check (and an admin page) in flight: a test
connection locks the token table, the check's query waits on the lock, the
fault is injected, the lock is released, and PostgreSQL's answer is lost.

- The primary vanishes (packets dropped both ways, no reset: power loss, a
  network split; `partition.py`) while DATABASE_URL lists a second host.
  Uncached tokens get 1013 at once while the stuck call holds the database
  thread; TCP keepalives and tcp_user_timeout end the dead connection within
  seconds (the kernel alone would take 15 minutes to 2 hours); then the
  second host takes over.
- A proxy in front of PostgreSQL is stopped (SIGSTOP). Its kernel still
  acknowledges every packet, so no TCP setting can tell: uncached tokens get
  1013 at once, and when it resumes the admin and new tokens work again.
"""

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from django.conf import settings
from django.test import Client

from conftest import free_port, wait_for_port
from stocktracker.lib.dbthread import database_call

from .clients import close_code, connect, recv_json

ROOT = Path(__file__).resolve().parents[3]
UNAVAILABLE = {"type": "error", "code": "unavailable", "message": "sign-in is temporarily unavailable; retry later"}


@pytest.fixture
def tokens(owner):
    """Tokens no process has seen yet: each needs the database on first use."""
    from apps.accounts.models import ApiToken

    return [ApiToken.issue(owner, label=f"t{n}", max_connections=50)[1] for n in range(60)]


@pytest.fixture
def admin_cookie(staff):
    client = Client()
    client.force_login(staff)
    return client.cookies["sessionid"].value


@pytest.fixture
def short_dir():
    """For Unix sockets, whose paths must stay under 108 bytes."""
    folder = tempfile.mkdtemp(prefix="stk-ns-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _partitioned_daphne(processes, folder, two_hosts=False, **env):
    port = free_port()
    args = [sys.executable, "-m", "apps.streams.tests.partition", folder, str(port)]
    args += ["--two-hosts"] if two_hosts else []
    proc = processes._start([*args, "--", "stocktracker.asgi:application"], "daphne", processes.env(**env))
    wait_for_port(port, proc, log_path=proc.log_path)
    proc.http_url, proc.ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    return proc


@pytest.fixture
def stopped_proxy_target():
    """A TCP proxy process (apps/streams/tests/redis_proxy.py) in front of the
    test PostgreSQL; resumed and killed at teardown."""
    target = urlsplit(os.environ["DATABASE_URL"]).port
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps.streams.tests.redis_proxy", str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening"), line
        proc.port = int(line.split()[1])
        yield proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


def _services():
    spec = importlib.util.spec_from_file_location("with_services", ROOT / "scripts" / "with_services.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_netloc(url, netloc):
    return urlunsplit(urlsplit(url)._replace(netloc=netloc))


async def _open(url, token):
    """(seconds, socket) once `welcome` came, or (seconds, (close code, frames))."""
    started = time.monotonic()
    ws = await connect(url, token)
    first = await recv_json(ws, 40)
    if first["type"] == "welcome":
        return time.monotonic() - started, ws
    code, frames = await close_code(ws, 40)
    return time.monotonic() - started, (code, [first, *frames])


async def _admin(web, cookie, timeout=60):
    """(status or the exception's name, seconds) of the token list in the admin."""
    started = time.monotonic()
    async with httpx.AsyncClient(cookies={"sessionid": cookie}, timeout=timeout) as client:
        try:
            status = (await client.get(f"{web.http_url}/admin/accounts/apitoken/")).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
    return status, time.monotonic() - started


async def _waiting_on_lock(db_url, count):
    """Until `count` queries wait on the test's lock of the token table."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for _ in range(200):
            waiting = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'accounts_apitoken'::regclass"
            ).fetchone()[0]
            if waiting >= count:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} queries waited on the lock")


async def _log_says(proc, text, timeout=10):
    deadline = time.monotonic() + timeout
    while text not in proc.log_path.read_text():
        assert time.monotonic() < deadline, f"{text!r} not in the log"
        await asyncio.sleep(0.05)


async def _refused_at_once(url, tokens, seconds, report, name):
    """Uncached tokens for `seconds`, one a second: each gets 1013 with the
    `error` frame, within 5 s."""
    took_most = 0.0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.monotonic()
        took, result = await _open(url, tokens.pop())
        assert took < 5, f"{name}: an uncached token waited {took:.1f} s for an answer"
        assert isinstance(result, tuple), f"{name}: an uncached token connected while the database was stuck"
        code, frames = result
        assert code == 1013, f"{name}: closed with {code}, frames {frames}"
        assert frames[0] == UNAVAILABLE
        took_most = max(took_most, took)
        await asyncio.sleep(max(0.0, 1 - (time.monotonic() - started)))
    report[f"{name}: slowest 1013 for an uncached token (s)"] = round(took_most, 2)


async def _connects_within(url, tokens, since, seconds):
    """Seconds after `since` at which an uncached token first connects,
    retrying once a second; until then every answer is 1013."""
    while True:
        assert time.monotonic() - since < seconds, f"no uncached token connected within {seconds} s"
        _, result = await _open(url, tokens.pop())
        if not isinstance(result, tuple):
            await result.close()
            return time.monotonic() - since
        assert result[0] == 1013, result
        await asyncio.sleep(1)


@pytest.mark.e2e
def test_a_primary_that_vanishes_mid_query_stalls_nothing_and_the_second_host_takes_over(
    processes, tokens, admin_cookie, short_dir
):
    db_url = processes.env()["DATABASE_URL"]
    web = _partitioned_daphne(
        processes,
        short_dir,
        two_hosts=True,
        DATABASE_URL=f"{db_url}?target_session_attrs=read-write",
        SECRET_KEY=settings.SECRET_KEY,  # the admin cookie is signed with it
    )
    url = f"{web.ws_url}/ws/market"
    report = {}

    async def main():
        _, ws = await _open(url, tokens.pop())
        assert not isinstance(ws, tuple), ws
        await ws.close()
        with psycopg.connect(db_url) as lock:
            lock.execute("LOCK TABLE accounts_apitoken IN ACCESS EXCLUSIVE MODE")
            check = asyncio.ensure_future(_open(url, tokens.pop()))
            admin = asyncio.ensure_future(_admin(web, admin_cookie))
            await _waiting_on_lock(db_url, 2)
            os.kill(web.pid, signal.SIGUSR1)  # the first host vanishes
            await _log_says(web, "database link cut")
            lock.commit()  # PostgreSQL answers both queries; the answers are lost
        cut = time.monotonic()

        # The stuck call holds the database thread until tcp_user_timeout (8 s).
        await _refused_at_once(url, tokens, 6, report, "stuck")
        took, result = await check
        assert isinstance(result, tuple) and result[0] == 1013, result
        report["the check caught in flight: 1013 after (s)"] = round(took, 2)

        # Each new connection gives up on the vanished host after
        # DATABASE_CONNECT_TIMEOUT and reaches the second.
        took = await _connects_within(url, tokens, cut, 30)
        report["first uncached token connects, after the cut (s)"] = round(took, 2)

        async with httpx.AsyncClient(timeout=30) as client:
            ready = (await client.get(f"{web.http_url}/status")).json()
        assert ready["checks"]["database"] == {"ok": True}, ready

        status, took = await admin
        report["the admin page caught in flight answered (status, s)"] = (status, round(took, 2))
        assert took < 15, f"the admin page caught in flight answered after {took:.1f} s ({status})"
        status, took = await _admin(web, admin_cookie)
        assert status == 200, status
        report["a new admin page: 200 in (s)"] = round(took, 2)

    asyncio.run(main())
    print(json.dumps(report, indent=1))


@pytest.mark.e2e
def test_a_stopped_proxy_before_postgresql_gets_uncached_tokens_1013_at_once_and_all_recovers_on_resume(
    processes, tokens, admin_cookie, stopped_proxy_target
):
    proxy = stopped_proxy_target
    db_url = processes.env()["DATABASE_URL"]
    via_proxy = _with_netloc(db_url, f"{urlsplit(db_url).netloc.rpartition('@')[0]}@127.0.0.1:{proxy.port}")
    web = processes.daphne(DATABASE_URL=via_proxy, SECRET_KEY=settings.SECRET_KEY)
    url = f"{web.ws_url}/ws/market"
    report = {}

    async def main():
        _, ws = await _open(url, tokens.pop())
        assert not isinstance(ws, tuple), ws
        await ws.close()
        with psycopg.connect(db_url) as lock:
            lock.execute("LOCK TABLE accounts_apitoken IN ACCESS EXCLUSIVE MODE")
            check = asyncio.ensure_future(_open(url, tokens.pop()))
            await _waiting_on_lock(db_url, 1)
            proxy.send_signal(signal.SIGSTOP)
            lock.commit()  # the answer waits in the stopped proxy

        await _refused_at_once(url, tokens, 7, report, "proxy stopped")
        proxy.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        took, result = await check
        report["the check caught in flight: answered after (s)"] = round(took, 2)
        if not isinstance(result, tuple):
            await result.close()

        status, took = await _admin(web, admin_cookie)
        assert status == 200, status
        assert time.monotonic() - resumed < 15
        report["admin after the proxy resumed: 200 in (s)"] = round(took, 2)
        report["first uncached token connects, after resuming (s)"] = round(
            await _connects_within(url, tokens, resumed, 15), 2
        )

    asyncio.run(main())
    print(json.dumps(report, indent=1))


@pytest.mark.e2e
def test_a_multi_host_url_skips_a_refusing_host_and_with_read_write_a_read_only_one():
    services = _services()
    folder = tempfile.mkdtemp(prefix="stk-ro-")
    procs = []
    try:
        read_only = urlsplit(services.start_postgres(folder, procs)).port
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{read_only}/postgres", autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_reload_conf()")
        writable = urlsplit(os.environ["DATABASE_URL"]).port
        refusing = free_port()
        hosts = f"127.0.0.1:{refusing},127.0.0.1:{read_only},127.0.0.1:{writable}"

        def server_port(attrs):
            env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
            env.update(
                DEBUG="true", DATABASE_URL=f"postgres://postgres@{hosts}/stocktracker?target_session_attrs={attrs}"
            )
            code = (
                "from django.db import connection; c = connection.cursor();"
                "c.execute('SELECT inet_server_port()'); print(c.fetchone()[0])"
            )
            result = subprocess.run(
                [sys.executable, "manage.py", "shell", "-v", "0", "-c", code],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr[-2000:]
            return int(result.stdout.split()[-1])

        assert server_port("read-write") == writable
        assert server_port("any") == read_only
    finally:
        for proc, name in procs:
            services.stop(proc, name)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.django_db
def test_every_postgresql_connection_has_tcp_keepalives_and_a_tcp_user_timeout():
    from django.db import connection

    connection.ensure_connection()
    sock = socket.socket(fileno=os.dup(connection.connection.pgconn.socket))
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        expected = (settings.DATABASE_CONNECT_TIMEOUT + (settings.DATABASE_STATEMENT_TIMEOUT or 30)) * 1000
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == expected
    finally:
        sock.close()


@pytest.mark.django_db(transaction=True)
async def test_a_token_check_waits_behind_a_busy_call_but_not_behind_one_stuck_on_a_query(tokens, monkeypatch):
    from django.db import connection

    from apps.accounts import auth

    @database_call
    def sleeps(count, seconds):
        with connection.cursor() as cursor:
            for _ in range(count):
                cursor.execute("SELECT pg_sleep(%s)", [seconds])

    monkeypatch.setattr(auth, "_database_down_until", 0.0)
    busy = asyncio.ensure_future(sleeps(30, 0.1))  # a batch of quick writes, 3 s in all
    await asyncio.sleep(2.2)
    started = time.monotonic()
    assert (await auth.check_token(tokens.pop(), "market")).ok
    assert time.monotonic() - started < 2, "the check did not wait for the busy call"
    await busy

    stuck = asyncio.ensure_future(sleeps(1, 3.5))  # one query that does not answer
    await asyncio.sleep(2.2)
    started = time.monotonic()
    with pytest.raises(auth.AccountsUnavailable):
        await auth.check_token(tokens.pop(), "market")
    assert time.monotonic() - started < 0.1
    await stuck
