"""apps.streams.transport is the only code that reaches into daphne, autobahn
and Twisted. These tests fail when those internals change (a new release) and
check that an unsupported server stops start-up with a clear message."""

import os
import subprocess
import sys

import pytest
from websockets.frames import Frame, Opcode

from apps.streams import transport

from .clients import connect, recv_json
from .conftest import publish

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_the_installed_server_is_supported_and_has_every_internal_we_use():
    assert transport.unsupported_versions() == []
    assert transport.missing_internals() == []


def test_an_unsupported_version_is_named_with_the_supported_range():
    bad = transport.unsupported_versions({"daphne": "5.0.1", "autobahn": "24.4.2", "Twisted": "24.3.0"})
    assert bad == [("daphne", "5.0.1")]
    assert "daphne >= 4.2.2, < 4.3" in transport.supported_text()


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
    parsed = _parse(transport.text_frame(payload))
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
