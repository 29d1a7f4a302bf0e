"""apps.streams.port is the only code that reaches into daphne, autobahn
and Twisted. These tests fail when those internals change (a new release) and
check that an unsupported server stops start-up with a clear message."""

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from websockets.exceptions import InvalidHandshake
from websockets.frames import Frame, Opcode

from apps.streams import links, port

from .clients import close_code, connect, recv_json
from .conftest import publish

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_the_installed_server_is_supported_and_has_every_internal_we_use():
    assert port.unsupported_versions() == []
    assert port.missing_internals() == []


def test_an_unsupported_version_is_named_with_the_supported_range():
    bad = port.unsupported_versions({"daphne": "5.0.1", "autobahn": "24.4.2", "Twisted": "24.3.0"})
    assert bad == [("daphne", "5.0.1")]
    assert "daphne >= 4.2.2, < 4.3" in port.supported_text()


def test_daphne_with_unsupported_internals_refuses_to_start():
    # A daphne whose autobahn lost a method we use: building the app must stop.
    code = (
        "import daphne.server, autobahn.websocket.protocol as p; del p.WebSocketProtocol.sendCloseFrame;"
        "import os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'stocktracker.settings');"
        "import stocktracker.asgi"
    )
    env = {**os.environ, "SECRET_KEY": "x" * 60, "DEBUG": "false"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "daphne internals changed" in done.stderr and "sendCloseFrame" in done.stderr


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_frames_built_once_parse_as_websocket_text_messages(size):
    payload = b"x" * size
    parsed = _parse(links.text_frame(payload))
    assert parsed.opcode == Opcode.TEXT and parsed.fin and parsed.data == payload


def _parse(data):
    from websockets.streams import StreamReader

    reader = StreamReader()
    reader.feed_data(data)
    gen = Frame.parse(reader.read_exact, mask=False)
    try:
        next(gen)
    except StopIteration as done:
        return done.value
    raise AssertionError("incomplete frame")


@pytest.mark.django_db(transaction=True)
async def test_frames_written_by_the_hub_reach_daphne_clients_intact(processes, owner_token):
    server = processes.daphne()
    big = {"rows": ["y" * 100] * 700}  # > 65,535 bytes: the 64-bit length form
    async with connect(server.ws_url + "/ws/market", owner_token[1]) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await publish(data={"n": 1})
        await publish(data=big)
        seen = []
        while len(seen) < 2:
            frame = await recv_json(ws, 5)
            if frame["type"] == "snapshot":
                seen.append(frame["data"])
        assert seen[-1] == big
    assert "Traceback" not in server.log_path.read_text()


# --- daphne's connection upkeep (port.install_upkeep) ----------------------------

PROBE_APP = "apps.streams.tests.daphne_probe:application"
# With --ping-interval 600 every connection is visited only every 30 s: anything
# seen within a few seconds below came from the per-change upkeep.
QUIET = ("--ping-interval", "600", "--application-close-timeout", "1", "--websocket_connect_timeout", "2")


async def quiet_daphne(processes, *args):
    """A probe daphne past its first visit of every connection: the next one is 30 s away."""
    server = processes.daphne(*QUIET, *args, app=PROBE_APP)
    await asyncio.sleep(2.5)
    return server


def test_a_changed_daphne_checker_stops_start_up():
    code = (
        "import daphne.server as s; s.Server.application_checker = lambda self: None;"
        "import os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'stocktracker.settings');"
        "import stocktracker.asgi"
    )
    env = {**os.environ, "SECRET_KEY": "x" * 60, "DEBUG": "false"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "daphne internals changed" in done.stderr and "Server.application_checker (changed)" in done.stderr


def test_the_full_sweep_follows_daphnes_ping_interval():
    class Server:
        ping_interval, websocket_timeout = 600, -1

    assert port.full_sweep_interval(Server) == port.FULL_SWEEP_MAX
    Server.ping_interval = 20  # daphne's default
    assert port.full_sweep_interval(Server) == 5
    Server.websocket_timeout = 4
    assert port.full_sweep_interval(Server) == 2


async def test_an_application_that_fails_is_reaped_and_its_socket_closed_within_seconds(processes):
    server = await quiet_daphne(processes)
    async with connect(server.ws_url + "/raise") as ws:
        code, _ = await close_code(ws, timeout=4)
    assert code == 1011
    assert "Exception inside application: probe failure" in server.log_path.read_text()


async def test_an_application_that_outlives_its_disconnect_is_killed(processes):
    server = await quiet_daphne(processes)
    async with connect(server.ws_url + "/linger"):
        pass
    assert await _eventually(lambda: "took too long to shut down and was killed" in server.log_path.read_text(), 5)


async def test_a_handshake_the_application_never_accepts_times_out(processes):
    server = await quiet_daphne(processes)
    started = time.monotonic()
    with pytest.raises(InvalidHandshake):  # daphne drops the handshake
        async with connect(server.ws_url + "/never", open_timeout=10):
            pass
    assert time.monotonic() - started < 6  # --websocket_connect_timeout 2, checked every 2 s


async def test_closed_connections_are_forgotten(processes):
    server = await quiet_daphne(processes)
    for _ in range(30):
        async with connect(server.ws_url + "/echo"):
            pass

    async def counts():
        async with connect(server.ws_url + "/count") as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 3))

    await asyncio.sleep(2.5)  # daphne reaps every second; everything visited every 30 s
    found = await counts()
    # Left: the /count socket itself and, for up to a second, the HTTP request it was upgraded from.
    assert found["connections"] <= 2 and found["changed"] <= 1 and found["opening"] <= 1, found


async def test_closed_sockets_are_freed_without_a_garbage_collection(processes):
    """autobahn resolves each protocol's `is_closed` with the protocol: a cycle
    that kept every closed socket alive until a full collection, and survivors
    of one are frozen in production (RSS +25 % over the soak). The probe runs
    with automatic collection off: a closed socket must go by refcounting."""
    server = await quiet_daphne(processes)
    for _ in range(30):
        async with connect(server.ws_url + "/echo"):
            pass
    await asyncio.sleep(2.5)  # daphne forgets a closed connection within a second
    async with connect(server.ws_url + "/count") as ws:
        found = json.loads(await asyncio.wait_for(ws.recv(), 3))
    assert found["closed_alive"] == 0, found


def test_daphne_still_sends_its_keepalive_pings(processes):
    server = processes.daphne("--ping-interval", "2", "--ping-timeout", "30", app=PROBE_APP)
    sock = socket.create_connection(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    sock.settimeout(1)
    data = b""
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not data.partition(b"\r\n\r\n")[2]:
        try:
            data += sock.recv(4096)
        except TimeoutError:
            pass
    sock.close()
    head, _, frames = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert frames[:1] == b"\x89", frames  # a ping frame (FIN + opcode 9) from daphne


async def _eventually(check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.1)
    return check()
