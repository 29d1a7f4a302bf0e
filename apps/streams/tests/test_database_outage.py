"""PostgreSQL hung (SIGSTOP) and then down (stopped), under a real daphne.

Open sockets keep streaming, a token the process already knows still
connects, an unknown one is refused with 1013 and a clear `error` frame
(never 1011 and a traceback), and a token's known expiry still closes its
socket on time. The test runs its own PostgreSQL so that stopping it leaves
the suite's database alone.
"""

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .clients import close_code, connect, recv_json

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]
WORKER_ENV = {"FEED_SOURCE": "simulator", "SIMULATOR_CLOCK": "demo", "SIMULATOR_SPEED": "60", "FEED_INTERVAL": "0.5"}
# Short timers so that, by the time the database goes away, every cached copy
# is older than TOKEN_CACHE_TTL: the checks then really need the database.
WEB_ENV = {
    "TOKEN_CACHE_TTL": "3",
    "TOKEN_RECHECK_INTERVAL": "2",
    "DATABASE_CONNECT_TIMEOUT": "2",
    "DATABASE_STATEMENT_TIMEOUT": "2",
}
EXPIRES_IN = 30  # seconds after the tokens are issued


def _services():
    spec = importlib.util.spec_from_file_location("with_services", ROOT / "scripts" / "with_services.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def own_postgres():
    services = _services()
    tmp = tempfile.mkdtemp(prefix="stocktracker-pg-outage-")
    procs = []
    try:
        url = services.start_postgres(tmp, procs)
        yield url, procs[0][0]
    finally:
        for proc, name in procs:
            _resume(proc)
            services.stop(proc, name)
        shutil.rmtree(tmp, ignore_errors=True)


def _tree(pid):
    """The postmaster and its backends."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(entry))
    return pids


def _signal_tree(proc, sig):
    for pid in _tree(proc.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop_postgres(proc):
    """Immediate shutdown; killed outright if that takes too long (a crash is "down" too)."""
    proc.send_signal(signal.SIGQUIT)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _signal_tree(proc, signal.SIGKILL)
        proc.wait(timeout=5)


def _resume(proc):
    if proc.poll() is None:
        _signal_tree(proc, signal.SIGCONT)


SETUP = """
import datetime as dt, json
from django.contrib.auth import get_user_model
from django.utils import timezone
from apps.accounts.models import ApiToken
user = get_user_model().objects.create_user("owner", "owner@example.com", "pw-not-used-0123")
expires = timezone.now() + dt.timedelta(seconds=%d)
tokens = {name: ApiToken.issue(user, label=name)[1] for name in ("known", "unknown")}
tokens["expiring"] = ApiToken.issue(user, label="expiring", expires_at=expires)[1]
tokens["expires_at"] = expires.timestamp()
print(json.dumps(tokens))
"""


def _manage(env, *args):
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


async def _open(url, token):
    """(seconds to `welcome`, socket) or (seconds to the close, (code, frames))."""
    started = time.monotonic()
    ws = await connect(url, token)
    first = await recv_json(ws, 10)
    if first["type"] == "welcome":
        return time.monotonic() - started, ws
    code, frames = await close_code(ws, 10)
    return time.monotonic() - started, (code, [first, *frames])


async def _snapshots_within(ws, seconds):
    count = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            break
        count += frame["type"] == "snapshot"
    return count


def test_with_postgres_hung_then_down_sockets_stream_known_tokens_connect_unknown_get_1013(processes, own_postgres):
    db_url, postgres = own_postgres
    env = processes.env(DATABASE_URL=db_url)
    _manage(env, "migrate", "--no-input", "-v", "0")
    tokens = json.loads(_manage(env, "shell", "-c", SETUP % EXPIRES_IN).strip().splitlines()[-1])
    web = processes.daphne(DATABASE_URL=db_url, **WEB_ENV)
    processes.worker(DATABASE_URL=db_url, **WORKER_ENV)
    url = f"{web.ws_url}/ws/market"
    report = {}

    async def phase(name):
        took, result = await _open(url, tokens["known"])
        assert not isinstance(result, tuple), f"{name}: the known token was refused: {result}"
        report[f"{name}: known token connects (s)"] = round(took, 2)
        await result.close()
        took, result = await _open(url, tokens["unknown"])
        assert isinstance(result, tuple), f"{name}: an unknown token connected without the database"
        code, frames = result
        assert code == 1013, f"{name}: closed with {code}, frames {frames}"
        assert frames[0] == {
            "type": "error",
            "code": "unavailable",
            "message": "sign-in is temporarily unavailable; retry later",
        }
        assert took < 5, f"{name}: refusal took {took:.1f} s"
        report[f"{name}: unknown token refused with 1013 (s)"] = round(took, 2)

    async def main():
        streaming = (await _open(url, tokens["known"]))[1]
        expiring = (await _open(url, tokens["expiring"]))[1]

        async def expiry_close():
            code, _ = await close_code(expiring, EXPIRES_IN + 30)
            return code, time.time() - tokens["expires_at"]

        expired = asyncio.ensure_future(expiry_close())
        await asyncio.sleep(4)  # re-checks have loaded both tokens; their copies age past the TTL
        assert await _snapshots_within(streaming, 2) >= 1

        _signal_tree(postgres, signal.SIGSTOP)  # hung: accepts TCP, answers nothing
        await phase("hung")
        assert await _snapshots_within(streaming, 3) >= 2, "the open socket stopped streaming"

        _resume(postgres)
        await asyncio.sleep(0.5)
        _stop_postgres(postgres)  # down
        await phase("down")
        assert await _snapshots_within(streaming, 3) >= 2, "the open socket stopped streaming"

        assert time.time() < tokens["expires_at"], "the outage phases outlasted the token (raise EXPIRES_IN)"
        code, late = await expired
        assert code == 4005, f"the expiring token's socket closed with {code}"
        assert late < 1.5, f"closed {late:.1f} s after the token expired"
        report["down: expired token's socket closed after its expiry (s)"] = round(late, 2)
        await streaming.close()

    asyncio.run(main())
    log = web.log_path.read_text()
    # (Background jobs such as the usage flush may log their retries; a socket never crashes.)
    crash = log.find("Exception inside application")
    assert crash < 0, log[crash:][:5000]
    print(json.dumps(report, indent=1))
