"""`make run`'s embedded mode for real: one runserver process, SQLite, the
in-memory layer and the simulator inside the web process; no Redis at all."""

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest
import websockets

from apps.streams.protocol import STREAMS
from conftest import ROOT, free_port, wait_for_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def embedded_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "SECRET_KEY")}
    env.update(DEBUG="true", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", PYTHONUNBUFFERED="1")
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
    first = subprocess.run([*manage, "bootstrap"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    token = re.search(r"API token: (stk_\S+)", first.stdout).group(1)
    port = free_port()
    log = open(tmp_path / "runserver.log", "w")
    proc = subprocess.Popen(
        [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc, log_path=tmp_path / "runserver.log")
        yield {"port": port, "token": token, "env": env, "log": tmp_path / "runserver.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def two_snapshots(url, token):
    """The snapshot sent on connect, then the next one published."""
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        snapshots = []
        while len(snapshots) < 2:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if frame["type"] == "snapshot":
                snapshots.append(frame)
        return snapshots


def test_all_three_streams_carry_live_simulated_data_with_no_services(embedded_server):
    port, token = embedded_server["port"], embedded_server["token"]

    async def main():
        return await asyncio.gather(*(two_snapshots(f"ws://127.0.0.1:{port}/ws/{stream}", token) for stream in STREAMS))

    for stream, (first, second) in zip(STREAMS, asyncio.run(main()), strict=True):
        assert first["stream"] == second["stream"] == stream
        assert first["simulated"] is True
        assert second["seq"] > first["seq"]
        assert second["data"] != first["data"], f"{stream} did not move"


def test_bootstrap_prints_the_token_on_the_first_run_only(embedded_server):
    again = subprocess.run(
        [sys.executable, "manage.py", "bootstrap"], cwd=ROOT, env=embedded_server["env"], capture_output=True, text=True
    )
    assert again.returncode == 0
    assert embedded_server["token"] not in again.stdout
    assert "stk_" not in again.stdout
