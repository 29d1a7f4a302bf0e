"""Tests' daphne runs as production runs it: with the Procfile's `web:` flags."""

import asyncio
from pathlib import Path

import websockets

from conftest import procfile_daphne_flags

OVER_DAPHNES_LIMIT = 70_000  # bytes: over the Procfile's --websocket-max-message-size 65536, under daphne's default


async def _send_oversized(ws_url):
    """The close code after a text message of OVER_DAPHNES_LIMIT bytes (None: no close frame)."""
    async with websockets.connect(f"{ws_url}/ws/market", max_size=2**20) as ws:
        await ws.send("x" * OVER_DAPHNES_LIMIT)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


def test_daphne_in_tests_runs_with_the_procfiles_flags(processes):
    web = processes.daphne()
    words = [w.decode() for w in Path(f"/proc/{web.pid}/cmdline").read_bytes().split(b"\0")]
    flags = procfile_daphne_flags()
    assert "--access-log" in flags and "--websocket-max-message-size" in flags  # what the Procfile says today
    assert words[words.index("daphne") + 1 :][: len(flags)] == flags
    # daphne itself drops the connection over the Procfile's limit (no close
    # frame: the client sees 1006); under daphne's default limit the app sees
    # the message and closes with 4008 (a test asking for the defaults gets them).
    assert asyncio.run(_send_oversized(web.ws_url)) is None
    default = processes.daphne(procfile=False)
    assert asyncio.run(_send_oversized(default.ws_url)) == 4008
