"""PostgreSQL hung (SIGSTOP) and then down (stopped), under a real daphne:
a dashboard socket signing in with its session cookie gets 101, one `error`
frame and 1013 ("retry later") within 5 s, whether the session signed in
before, never did, or is forged; never an HTTP 500 and a traceback. The
test runs its own PostgreSQL so that stopping it leaves the suite's alone."""

import asyncio
import json
import signal
import time

import pytest
import websockets

from . import test_database_outage as outage
from .clients import close_code, recv_json
from .test_database_outage import _manage, _resume, _signal_tree, _stop_postgres

own_postgres = outage.own_postgres  # the fixture: a PostgreSQL of the test's own

pytestmark = pytest.mark.e2e

WEB_ENV = {"DATABASE_CONNECT_TIMEOUT": "2", "DATABASE_STATEMENT_TIMEOUT": "2"}
UNAVAILABLE = {"type": "error", "code": "unavailable", "message": "sign-in is temporarily unavailable; retry later"}

SETUP = """
import json
from django.contrib.auth import get_user_model
from django.test import Client
keys = {}
for name in ("signed_in_before", "never_used"):
    client = Client()
    client.force_login(get_user_model().objects.create_user(name, f"{name}@example.com", "pw-not-used-0123"))
    keys[name] = client.cookies["sessionid"].value
print(json.dumps(keys))
"""


async def _open(url, origin, key):
    """(seconds, "welcome") or (seconds, (close code, frames))."""
    started = time.monotonic()
    async with websockets.connect(
        url, additional_headers={"Cookie": f"sessionid={key}", "Origin": origin}, open_timeout=10
    ) as ws:
        first = await recv_json(ws, 10)
        if first["type"] == "welcome":
            return time.monotonic() - started, "welcome"
        code, frames = await close_code(ws, 10)
        return time.monotonic() - started, (code, [first, *frames])


def test_with_postgres_hung_then_down_cookie_sign_ins_get_1013_with_an_error_frame(processes, own_postgres):
    db_url, postgres = own_postgres
    env = processes.env(DATABASE_URL=db_url)
    _manage(env, "migrate", "--no-input", "-v", "0")
    keys = json.loads(_manage(env, "shell", "-c", SETUP).strip().splitlines()[-1])
    keys["forged"] = "0123456789abcdefghijklmnopqrstuv"
    web = processes.daphne(DATABASE_URL=db_url, **WEB_ENV)
    url, origin = f"{web.ws_url}/ws/market", web.http_url
    report = {}

    async def phase(name):
        for who, key in keys.items():
            took, result = await _open(url, origin, key)
            assert result != "welcome", f"{name}: {who} signed in without the database"
            code, frames = result
            assert (code, frames[0]) == (1013, UNAVAILABLE), f"{name}: {who} got {code}, frames {frames}"
            assert took < 5, f"{name}: {who} refused after {took:.1f} s"
            report[f"{name}: {who} refused 1013 (s)"] = round(took, 2)

    async def main():
        assert (await _open(url, origin, keys["signed_in_before"]))[1] == "welcome"
        _signal_tree(postgres, signal.SIGSTOP)  # hung: accepts TCP, answers nothing
        await phase("hung")
        _resume(postgres)
        await asyncio.sleep(0.5)
        _stop_postgres(postgres)  # down
        await asyncio.sleep(2.5)  # past the moment the hung phase's failure is remembered
        await phase("down")

    asyncio.run(main())
    print(json.dumps(report, indent=1))
    log = web.log_path.read_text()
    for sign in ("Exception inside application", "Traceback"):
        assert sign not in log, log[log.find(sign) :][:5000]
