"""Soak: 2,000 clients for SOAK_SECONDS (default 600) with churn, a Redis
restart and a daphne restart in the middle; writes bench/SOAK.md.

    make soak                      # 10 minutes
    SOAK_SECONDS=180 make soak     # a shortened run

Loopback only, bounded in time. Runs under scripts/with_services.py for
PostgreSQL; starts its own redis-server (so that it can restart it on the
same port), one feed worker and the Procfile's `web:` daphne with the
production timers. The clients (bench/soak_client.py, two processes) follow
one stream each; a tenth of them reconnect every 10 s.

Schedule: Redis restarted at 20 % of the run, daphne (SIGTERM, then a new
one on the same port) at 30 %, so the clients are back well before the last half. Reported:
- daphne RSS growth over the last half of the run (the restarted process,
  from 50 % to the end): pass at <= 5 %;
- leases in Redis (the bench token's lease set) vs sockets open, 10 s after
  churn stops: pass when equal;
- frames lost (seq gaps on an open socket) outside the restart windows
  (from 1 s before each restart to 20 s after): pass at 0;
- silent sockets: an open socket that got no snapshot for more than
  SILENCE seconds while its stream published at least two (what was
  published is read from Redis every 0.25 s: each stream's epoch and seq):
  pass at 0, restart windows included;
- seq going backwards within an epoch, as a client that keeps its position
  across reconnects sees it: pass at 0.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "2000"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
PROCS = 2
WINDOW_BEFORE, WINDOW_AFTER = 1.0, 20.0
SILENCE = 3.0  # seconds without a snapshot that a client reports (three publish intervals)
PUBLISHED_POLL = 0.25  # seconds between reads of what each stream published
IN_FLIGHT = 1.0  # a publish this close to either end of a silence may have been on its way
OUT = ROOT / "bench" / "SOAK.md"

sys.path.insert(0, str(ROOT / "bench"))
from run import procfile_web  # noqa: E402 - the bench's reading of the Procfile's `web:` line

from stocktracker.lib import keys  # noqa: E402 - run.py put the project on the path
from stocktracker.lib.catalogue import STREAMS  # noqa: E402
from stocktracker.lib.state.frames import epoch_of  # noqa: E402


def log(message):
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, timeout=60):
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on {port}")


class Soak:
    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="stocktracker-soak-"))
        self.procs = []
        self.redis_port = free_port()
        self.web_port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            DJANGO_SETTINGS_MODULE="stocktracker.settings",
            DEBUG="false",
            SECRET_KEY=os.environ.get("SECRET_KEY") or "soak-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
            REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            WS_MAX_CONNECTIONS_PER_IP=str(CLIENTS * 2),
            WS_MAX_UNAUTHENTICATED_PER_IP=str(CLIENTS * 2),  # every client is 127.0.0.1
            FEED_SOURCE="simulator",
            SIMULATOR_CLOCK="demo",
            FEED_INTERVAL="1",
            SIMULATOR_SPEED="30",
            FEED_IN_PROCESS="false",
            PYTHONUNBUFFERED="1",
        )
        self.reports = []  # (client process, report)
        self.events = {}  # name -> wall time
        self.rss = []  # (wall time, MB) of the current daphne
        self.published = {stream: [] for stream in STREAMS}  # stream -> [(wall time, epoch, seq)] as it changed

    def start(self, args, name, env=None):
        log_file = open(self.tmp / f"{name}.log", "a")
        proc = subprocess.Popen(args, cwd=ROOT, env=env or self.env, stdout=log_file, stderr=subprocess.STDOUT)
        proc.name = name
        self.procs.append(proc)
        return proc

    def stop(self, proc, sig=signal.SIGTERM, timeout=20):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def redis(self):
        proc = self.start(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "", "--appendonly", "no"],
            "redis",
        )
        wait_port(self.redis_port)
        return proc

    def daphne(self):
        proc = self.start(procfile_web(self.web_port), "daphne")
        wait_port(self.web_port)
        return proc

    def watch_published(self, done):
        """What each stream published: its epoch and seq, read from Redis as they change."""
        import redis

        client = redis.Redis.from_url(self.env["REDIS_URL"], socket_timeout=1, decode_responses=True)
        while not done.is_set():
            try:
                with client.pipeline(transaction=False) as pipe:
                    for stream in STREAMS:
                        pipe.hmget(keys.seq(stream), "day", "inc", "seq")
                    rows = pipe.execute()
            except (redis.RedisError, OSError):
                rows = []  # Redis restarting: nothing is published meanwhile
            now = time.time()
            for stream, (day, inc, seq) in zip(STREAMS, rows, strict=False):
                if seq is None or seq == "0":
                    continue
                position = (epoch_of(day, inc), int(seq))
                seen = self.published[stream]
                if not seen or seen[-1][1:] != position:
                    seen.append((now, *position))
            done.wait(PUBLISHED_POLL)
        client.close()

    def read_clients(self, proc, index):
        for line in proc.stdout:
            if line.startswith("REPORT "):
                self.reports.append((index, json.loads(line[7:])))

    def run(self):
        subprocess.run([PY, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=self.env, check=True)
        seeded = subprocess.run(
            [PY, "bench/seed.py", "--max-connections", str(CLIENTS * 2)],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        seed = json.loads(next(line for line in seeded.splitlines() if line.startswith("TOKEN "))[6:])
        redis_proc = self.redis()
        self.start([PY, "manage.py", "runworker"], "worker")
        web = self.daphne()
        client_env = {**self.env, "BENCH_TOKEN": seed["token"]}
        share = CLIENTS // PROCS
        clients = []
        client_args = [PY, "bench/soak_client.py", "--port", str(self.web_port), "--n", str(share)]
        client_args += ["--life", str(SECONDS + 120), "--silence", str(SILENCE)]
        watching = threading.Event()
        threading.Thread(target=self.watch_published, args=(watching,), daemon=True).start()
        for index in range(PROCS):
            proc = subprocess.Popen(
                [*client_args, "--offset", str(index * share)],
                cwd=ROOT,
                env=client_env,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.procs.append(proc)
            clients.append(proc)
            threading.Thread(target=self.read_clients, args=(proc, index), daemon=True).start()
        started = time.time()
        self.events["start"] = started
        log(f"{CLIENTS} clients, {SECONDS:.0f} s; logs in {self.tmp}")
        plan = [(0.20, "redis restart"), (0.30, "daphne restart")]
        while time.time() - started < SECONDS:
            elapsed = (time.time() - started) / SECONDS
            if plan and elapsed >= plan[0][0]:
                _, what = plan.pop(0)
                self.events[what] = time.time()
                log(what)
                if what == "redis restart":
                    self.stop(redis_proc, signal.SIGKILL)
                    time.sleep(1)
                    redis_proc = self.redis()
                else:
                    self.stop(web)
                    self.rss = []
                    web = self.daphne()
            try:
                self.rss.append((time.time(), psutil.Process(web.pid).memory_info().rss / 2**20))
            except psutil.Error:
                pass
            time.sleep(5)
        self.events["churn stop"] = time.time()
        for proc in clients:  # no more churn; server-side closes still reconnect
            proc.send_signal(signal.SIGUSR1)
        time.sleep(10)
        import redis

        r = redis.Redis.from_url(self.env["REDIS_URL"])
        leases = r.zcount(keys.lease_set(keys.ip("127.0.0.1")), int(time.time() * 1000), "+inf")
        sockets = sum(
            1
            for conn in psutil.Process(web.pid).net_connections(kind="tcp")
            if conn.laddr and conn.laddr.port == self.web_port and conn.status == psutil.CONN_ESTABLISHED
        )
        time.sleep(6)  # one more client report, taken after the count
        watching.set()
        r.close()
        for proc in clients:
            self.stop(proc)
        time.sleep(1)
        return self.summarise(leases, sockets)

    def summarise(self, leases, sockets):
        windows = [
            (self.events[name] - WINDOW_BEFORE, self.events[name] + WINDOW_AFTER)
            for name in ("redis restart", "daphne restart")
        ]
        lost_outside = lost_inside = 0
        for _, report in self.reports:
            for at, count in report["losses"]:
                if any(lo <= at <= hi for lo, hi in windows):
                    lost_inside += count
                else:
                    lost_outside += count
        silent_sockets = {"inside": 0, "outside": 0}
        silent_worst = None  # (seconds, stream, snapshots published meanwhile)
        backwards = []
        for _, report in self.reports:
            backwards += report.get("backwards", [])
            for stream, begin, end, silent in report.get("silences", []):
                missed = sum(1 for at, *_ in self.published[stream] if begin + IN_FLIGHT < at < end - IN_FLIGHT)
                if missed < 2:
                    continue  # the stream was quiet too (or one frame was on its way)
                where = "inside" if any(lo <= begin <= hi or lo <= end <= hi for lo, hi in windows) else "outside"
                silent_sockets[where] += silent
                if silent_worst is None or end - begin > silent_worst[0]:
                    silent_worst = (round(end - begin, 1), stream, missed)
        start = self.events["start"]
        half = start + SECONDS / 2
        last_half = [mb for at, mb in self.rss if at >= half]
        growth = (last_half[-1] - last_half[0]) / last_half[0] * 100 if len(last_half) >= 2 else None
        last = {}
        for index, report in self.reports:
            last[index] = report
        open_now = sum(report["open"] for report in last.values())
        closes, errors = {}, {}
        for report in last.values():
            for key, value in report["closes"].items():
                closes[key] = closes.get(key, 0) + value
            for key, value in report["errors"].items():
                errors[key] = errors.get(key, 0) + value
        result = {
            "clients": CLIENTS,
            "seconds": SECONDS,
            "rss_last_half_mb": [round(last_half[0], 1), round(last_half[-1], 1)] if last_half else None,
            "rss_growth_pct": round(growth, 2) if growth is not None else None,
            "leases": leases,
            "sockets_open_server": sockets,
            "sockets_open_clients": open_now,
            "frames_received": sum(report["frames"] for report in last.values()),
            "connects": sum(report["connects"] for report in last.values()),
            "lost_outside_restarts": lost_outside,
            "lost_inside_restarts": lost_inside,
            "silent_while_published_outside_restarts": silent_sockets["outside"],
            "silent_while_published_inside_restarts": silent_sockets["inside"],
            "longest_silence_while_published": silent_worst,
            "seq_backwards": len(backwards),
            "seq_backwards_first": backwards[:5],
            "published": {stream: len(seen) for stream, seen in self.published.items()},
            "close_codes_seen_by_clients": closes,
            "client_errors": errors,
        }
        return result

    def cleanup(self):
        for proc in reversed(self.procs):
            self.stop(proc)
        log(f"process logs kept in {self.tmp}")


def write(result, command):
    def verdict(ok):
        return "pass" if ok else "FAIL"

    growth = result["rss_growth_pct"]
    silent_outside = result["silent_while_published_outside_restarts"]
    silent_inside = result["silent_while_published_inside_restarts"]
    rows = [
        (
            "daphne RSS growth over the last half",
            f"{growth} % {result['rss_last_half_mb']} MB",
            "≤ 5 %",
            verdict(growth is not None and growth <= 5),
        ),
        (
            "leases in Redis vs sockets open (server / clients)",
            f"{result['leases']} vs {result['sockets_open_server']} / {result['sockets_open_clients']}",
            "equal",
            verdict(result["leases"] == result["sockets_open_server"] == result["sockets_open_clients"]),
        ),
        (
            "frames lost outside the restart windows",
            str(result["lost_outside_restarts"]),
            "0",
            verdict(result["lost_outside_restarts"] == 0),
        ),
        (
            f"sockets silent > {SILENCE:.0f} s while their stream published (outside / inside the restart windows)",
            f"{silent_outside} / {silent_inside}",
            "0 / 0",
            verdict(silent_outside + silent_inside == 0),
        ),
        (
            "seq going backwards within an epoch (as a client keeping its position sees it)",
            str(result["seq_backwards"]),
            "0",
            verdict(result["seq_backwards"] == 0),
        ),
    ]
    lines = [
        "# Soak results",
        "",
        f"Command: `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{result['clients']} clients for {result['seconds']:.0f} s, a tenth reconnecting every 10 s, "
        "Redis killed and restarted at 20 %, daphne restarted (SIGTERM) at 30 %.",
        "",
        "| check | measured | target | |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        f"Frames lost inside the restart windows (1 s before to 20 s after): {result['lost_inside_restarts']}. "
        f"Snapshots received: {result['frames_received']}; connects: {result['connects']}. "
        f"Longest silence while the stream published (s, stream, snapshots published meanwhile): "
        f"{result['longest_silence_while_published']}.",
        f"Close codes the clients saw: {result['close_codes_seen_by_clients']}; "
        f"client-side errors: {result['client_errors']}.",
        "",
        "Raw:",
        "",
        "```json",
        json.dumps(result, indent=1),
        "```",
        "",
    ]
    OUT.write_text("\n".join(lines))


def main():
    soak = Soak()

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        result = soak.run()
    finally:
        soak.cleanup()
    command = f"SOAK_SECONDS={SECONDS:.0f} make soak" if SECONDS != 600 else "make soak"
    write(result, command)
    print(json.dumps(result, indent=1))
    log(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
