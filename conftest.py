"""Shared test fixtures: personas, real Redis between tests, real processes.

`make test` (scripts/with_services.py) provides REDIS_URL and a PostgreSQL
DATABASE_URL; every test runs against them. Tests that need embedded mode
ask for the `embedded` fixture.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent
PASSWORD = "correct horse battery staple"


def pytest_configure(config):
    if os.environ.get("CI") and not (
        os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL", "").startswith("postgres")
    ):
        raise pytest.UsageError("CI runs need REDIS_URL and a PostgreSQL DATABASE_URL: run `make test`.")


# --- channel layer and shared state --------------------------------------------


def _reset_layers():
    from channels.layers import channel_layers

    from stocktracker.lib.state import reset_state

    channel_layers.backends.clear()
    reset_state()


@pytest.fixture(autouse=True)
def clean_shared_state():
    """Every test starts with an empty Redis and fresh layer/state objects."""
    if settings.REDIS_URL:
        from stocktracker.lib import redis as redis_lib

        client = redis_lib.sync_client()
        client.flushdb()
        client.close()
    _reset_layers()
    yield
    _reset_layers()


@pytest.fixture
def embedded(settings):
    """Embedded mode: in-memory layer and in-process state, no Redis."""
    settings.REDIS_URL = ""
    settings.EMBEDDED = True
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    _reset_layers()
    yield settings
    _reset_layers()


# --- personas ----------------------------------------------------------------


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", "owner@example.com", PASSWORD)


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("other", "other@example.com", PASSWORD)


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("staff", "staff@example.com", PASSWORD)


@pytest.fixture
def owner_token(owner):
    """(ApiToken, plaintext) for `owner`, all streams."""
    from apps.accounts.models import ApiToken

    return ApiToken.issue(owner, label="bot")


# --- real processes ----------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, proc, timeout=30.0, log_path=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = Path(log_path).read_text() if log_path else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening:\n{output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


ASGI_APP = "stocktracker.asgi:application"


def procfile_daphne_flags():
    """The Procfile's `web:` daphne flags, less the address, port and application (the fixture sets those)."""
    line = next(x for x in (ROOT / "Procfile").read_text().splitlines() if x.startswith("web:"))
    words = line.removeprefix("web:").split()
    assert words[0] == "daphne" and words[-1] == ASGI_APP, line
    flags, rest = [], iter(words[1:-1])
    for word in rest:
        if word in ("--bind", "-b", "--port", "-p"):
            next(rest)
        else:
            flags.append(word)
    return flags


# A runworker on the simulator, stepping fast enough for a test to see changes.
WORKER_ENV = {
    "FEED_SOURCE": "simulator",
    "SIMULATOR_CLOCK": "demo",
    "SIMULATOR_SPEED": "60",
    "FEED_INTERVAL": "0.5",
    "FEED_PUBLISH_INTERVAL": "0.5",
}


class Processes:
    """Starts real daphne / runworker processes against the test database and
    the test Redis; stops every one of them at teardown."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs = []

    def env(self, **overrides):
        from django.db import connection

        env = dict(os.environ)
        # Point the child at the test database pytest-django created.
        db_url = urlsplit(os.environ["DATABASE_URL"])
        env["DATABASE_URL"] = urlunsplit(db_url._replace(path="/" + connection.settings_dict["NAME"]))
        env.update(
            DEBUG="false",
            SECRET_KEY="test-secret-key-for-subprocesses-only-0123456789abcdef",
            REDIS_URL=settings.REDIS_URL,
            FEED_IN_PROCESS="false",
            SECURE_COOKIES="false",
            PYTHONUNBUFFERED="1",
        )
        env.update({key: str(value) for key, value in overrides.items()})
        return env

    def _start(self, args, name, env):
        log_path = self.tmp_path / f"{name}-{len(self.procs)}.log"
        with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc.log_path = log_path
        self.procs.append(proc)
        return proc

    def daphne(self, *args, app=ASGI_APP, procfile=True, **env):
        """A daphne process with the Procfile's `web:` flags, as production runs
        it, on a free loopback port. `args` are extra daphne flags, after those
        (e.g. "-v", "2"; of a flag given twice the last wins); `procfile=False`:
        daphne's own defaults instead of the Procfile's flags."""
        port = free_port()
        flags = procfile_daphne_flags() if procfile else []
        proc = self._start(
            [sys.executable, "-m", "daphne", *flags, "-b", "127.0.0.1", "-p", str(port), *args, app],
            "daphne",
            self.env(**env),
        )
        wait_for_port(port, proc, log_path=proc.log_path)
        proc.port = port
        proc.http_url = f"http://127.0.0.1:{port}"
        proc.ws_url = f"ws://127.0.0.1:{port}"
        return proc

    def worker(self, *args, market_now=None, **env):
        """A runworker process; `market_now` (an aware datetime) sets its market
        clock, which then moves with the wall clock (tests/clocked_worker.py)."""
        if market_now is None:
            return self._start([sys.executable, "manage.py", "runworker", *args], "runworker", self.env(**env))
        command = [sys.executable, "tests/clocked_worker.py", *args]
        return self._start(command, "runworker", self.env(TEST_MARKET_NOW=market_now.isoformat(), **env))

    def stop(self, proc, sig=signal.SIGTERM, timeout=15):
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def stop_all(self):
        for proc in self.procs:
            self.stop(proc)


@pytest.fixture
def processes(tmp_path, transactional_db):
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


class OwnRedis:
    """A redis-server of the test's own on a free loopback port, without
    persistence, so that a test can kill it or restart it empty on the same port."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.tmp_path = tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            cwd=self.tmp_path,
        )
        wait_for_port(self.port, self.proc)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def restart_empty(self, down=0.0):
        """`SHUTDOWN NOSAVE`, then after `down` seconds a new redis-server on
        the same port; returns the wall time at which it answers PING."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the shutdown closes our connection
        self.proc.wait(10)
        time.sleep(down)
        self.start()
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.02)
        client.close()
        return time.time()


@pytest.fixture
def own_redis(tmp_path, settings):
    """A redis-server of the test's own (`OwnRedis`); this process's settings point at it."""
    from channels.layers import channel_layers

    from stocktracker.lib.state import reset_state

    found = OwnRedis(tmp_path)
    found.start()
    settings.REDIS_URL = found.url
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": found.url, "socket_connect_timeout": 2}], "prefix": "stk"},
        }
    }
    channel_layers.backends.clear()
    reset_state()
    yield found
    if found.proc.poll() is None:
        found.kill()
    channel_layers.backends.clear()
    reset_state()
