"""Every refused handshake gets its answer. Garbled tokens (`stk_` and junk,
by Bearer header, `?token=` and a first `auth` message), 2,000 connecting at
once, five rounds, against daphne run with the Procfile's flags (production
mode) and against `make run`'s runserver (embedded mode): each one gets 101,
one `error` frame and the close code that frame names; none is dropped. A
socket to a path that does not exist gets a plain 404 at the handshake.

The caps on sockets not signed in yet stay at their defaults, as production
runs them: with every client on 127.0.0.1 they refuse many of these with 4100
(per address) or 1013 (per process), with an `error` frame. That is an answer
too, and it comes from a second refusal path (before the consumer starts).
"""

import asyncio
import collections
import contextlib
import json
import os
import resource
import secrets
import signal
import string
import subprocess
import sys
from types import SimpleNamespace

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.streams.protocol import Refusal
from conftest import ROOT, free_port, wait_for_port

from .clients import wait_until

pytestmark = pytest.mark.e2e

CLIENTS = 2000
ROUNDS = 5
HOWS = ("bearer", "query", "auth")
# (close code, `error` frame code) a garbled token may get from one address. An
# `auth` message that a loaded machine reads after WS_AUTH_TIMEOUT is answered too.
ANSWERS = {
    (int(r.close), r.error)
    for r in (
        Refusal.BAD_TOKEN,
        Refusal.AUTH_TIMEOUT,
        Refusal.OVER_LIMIT,
        Refusal.SIGN_IN_FULL,
        Refusal.OVERLOADED,
        Refusal.LIMITED,
    )
}
JUNK = string.ascii_letters + string.digits + "-_."


@pytest.fixture
def runserver(tmp_path):
    """`make run`'s server: runserver in embedded mode (SQLite, in-memory layer, no Redis)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "SECRET_KEY")}
    env.update(DEBUG="true", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", PYTHONUNBUFFERED="1")
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
    port, log_path = free_port(), tmp_path / "runserver.log"
    with open(log_path, "w") as log:
        # --noreload: the autoreloader only restarts this same server when a file changes.
        proc = subprocess.Popen(
            [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, proc, log_path=log_path)
        yield SimpleNamespace(ws_url=f"ws://127.0.0.1:{port}", log_path=log_path)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(params=["daphne", "runserver"])
def server(request):
    # Both ends of every socket, in this process and the server it starts (which inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 2 * CLIENTS + 500, f"RLIMIT_NOFILE hard limit {hard}: too few for {CLIENTS} sockets"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * CLIENTS + 500), hard))
    if request.param == "runserver":
        return request.getfixturevalue("runserver")
    return request.getfixturevalue("processes").daphne()  # with the Procfile's flags


def garbled():
    return "stk_" + "".join(secrets.choice(JUNK) for _ in range(1 + secrets.randbelow(60)))


async def answer(url, how):
    """What one connect with a garbled token got, as the client saw it."""
    token, headers = garbled(), {}
    if how == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    elif how == "query":
        url = f"{url}?token={token}"
    try:
        ws = await websockets.connect(url, additional_headers=headers, open_timeout=30, close_timeout=10)
    except InvalidStatus as exc:
        return f"HTTP {exc.response.status_code}"
    except (OSError, TimeoutError, websockets.exceptions.InvalidHandshake) as exc:
        return f"no HTTP response ({type(exc).__name__})"
    frames = []
    try:
        async with asyncio.timeout(30):
            if how == "auth":
                with contextlib.suppress(ConnectionClosed):  # refused already: its frames are still read below
                    await ws.send(json.dumps({"type": "auth", "token": token}))
            while True:
                frames.append(json.loads(await ws.recv()))
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
    except TimeoutError:
        await ws.close()
        return "101, then nothing"
    errors = [frame["code"] for frame in frames if frame.get("type") == "error"]
    if len(errors) != 1 or code is None:
        return f"101, error frames {errors}, close {code}"
    return (code, errors[0])


async def storm(url):
    results = await asyncio.gather(*(answer(url, HOWS[i % len(HOWS)]) for i in range(CLIENTS)))
    return collections.Counter(results)


def test_every_garbled_token_connect_gets_101_an_error_frame_and_a_close_code(server):
    url = f"{server.ws_url}/ws/market"
    for n in range(ROUNDS):
        counts = asyncio.run(storm(url))
        wrong = {answer: count for answer, count in counts.items() if answer not in ANSWERS}
        assert not wrong, f"round {n + 1}: {wrong} (all: {dict(counts)})"
        assert sum(counts.values()) == CLIENTS
    assert counts[(int(Refusal.BAD_TOKEN.close), Refusal.BAD_TOKEN.error)], counts  # the credential check answered


def test_a_socket_to_a_path_that_does_not_exist_gets_a_plain_404(server):
    async def main():
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(f"{server.ws_url}/ws/nope", open_timeout=10)
        return refused.value.response.status_code

    assert asyncio.run(main()) == 404
    # daphne logs a failed application when it reaps it, within its 1 s check.
    assert not wait_until(lambda: "Traceback" in server.log_path.read_text(), 2)
    assert "No route found" not in server.log_path.read_text()
