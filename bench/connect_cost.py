"""Redis commands per connect and RSS per idle connection, on the Procfile's daphne.

    python scripts/with_services.py -- .venv/bin/python bench/connect_cost.py --connects 100 --idle 2000

Migrates, seeds the bench token (bench/seed.py), starts the Procfile's web
process, warms it with one connect, then:

- opens and closes `--connects` sockets one after the other while
  `redis-cli MONITOR` records every command (commands run inside Lua scripts
  are not counted: they cost no round trip) and prints the commands per
  connect and disconnect, by name: once with no other socket open, once
  while one socket of the same token stays open (the usual case);
- opens `--idle` sockets and holds them: RSS growth of daphne / sockets.
"""

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import websockets

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (the bench's own process helpers and environment)


def seed(env):
    subprocess.run([run.PY, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=run.ROOT, env=env, check=True)
    out = subprocess.run(
        [run.PY, os.path.join(HERE, "seed.py"), "--max-connections", "20000"],
        cwd=run.ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("TOKEN "))
    return json.loads(line[6:])["token"]


async def one(url, token):
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first["type"] == "welcome", first


def monitor(redis_url):
    """redis-cli MONITOR, read as it goes (a full pipe would stall it and lose lines)."""
    proc = subprocess.Popen(
        ["stdbuf", "-oL", "redis-cli", "-u", redis_url, "MONITOR"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    proc.lines = []
    proc.reader = threading.Thread(target=lambda: proc.lines.extend(proc.stdout), daemon=True)
    proc.reader.start()
    return proc


def counted(lines):
    names = collections.Counter()
    for line in lines:
        if " lua]" in line or '"' not in line:
            continue
        names[line.split('"', 2)[1].upper()] += 1
    return names


async def hold(url, token, n):
    socks = []
    for start in range(0, n, 100):
        socks += await asyncio.gather(
            *(
                websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30)
                for _ in range(min(100, n - start))
            )
        )
    refused = collections.Counter()
    for ws in socks:
        first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if first["type"] != "welcome":
            refused[first.get("code")] += 1
    if refused:
        print(json.dumps({"refused_while_opening": refused}))
    return socks


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connects", type=int, default=100)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--db-conn-max-age", default=None)
    args = parser.parse_args()
    env = run.base_env(args)
    token = seed(env)
    port = run.free_port()
    logdir = tempfile.mkdtemp(prefix="connect-cost-")
    srv = run.Proc("daphne", run.server_cmd("daphne", port), env, logdir=logdir)
    try:
        run.wait_port(port, srv)
        url = f"ws://127.0.0.1:{port}/ws/market"
        await one(url, token)
        await one(url, token)
        await asyncio.sleep(1)
        for phase, held in (("alone", False), ("token_already_open", True)):
            keep = await hold(url, token, 1) if held else []
            await asyncio.sleep(1)
            mon = monitor(os.environ["REDIS_URL"])
            time.sleep(0.5)
            for _ in range(args.connects):
                await one(url, token)
            await asyncio.sleep(1.5)
            mon.terminate()
            mon.wait(10)
            mon.reader.join(10)
            for ws in keep:
                await ws.close()
            names = counted(mon.lines)
            total = sum(names.values())
            print(
                json.dumps(
                    {
                        "phase": phase,
                        "connects": args.connects,
                        "commands_per_connect": round(total / args.connects, 2),
                        "by_command": {k: round(v / args.connects, 2) for k, v in names.most_common()},
                    }
                )
            )
        if args.idle:
            ps = srv.ps
            await asyncio.sleep(1)
            before = ps.memory_info().rss
            socks = await hold(url, token, args.idle)
            await asyncio.sleep(5)
            after = ps.memory_info().rss
            print(json.dumps({"idle": args.idle, "rss_kib_per_conn": round((after - before) / 1024 / args.idle, 1)}))
            for ws in socks:
                await ws.close()
    finally:
        srv.stop()


if __name__ == "__main__":
    asyncio.run(main())
