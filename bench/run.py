"""`make bench`: WebSocket fan-out benchmark of the three streams.

    python scripts/with_services.py -- python bench/run.py          # what `make bench` runs
    python scripts/with_services.py -- python bench/run.py --quick  # N=200, short runs, no RESULTS.md

Needs REDIS_URL and DATABASE_URL (with_services.py provides throwaway ones).
Once: migrate, create the bench user and token through the ORM (bench/seed.py).
Then for every (N, server) in the matrix (the channel layer is the pub/sub one, the only one):

1. start the ASGI server on 127.0.0.1 (daphne, or uvicorn with the
   websockets-sansio protocol, permessage-deflate off, uvloop when installed)
   and the feed (`manage.py runworker`, simulator on the demo clock, 1 Hz);
2. connect N clients from --procs client processes (bench/client.py), spread
   round-robin over /ws/market, /ws/foreign and /ws/index, with a Bearer token;
3. after --warmup s, measure for --duration s: publish-to-receive latency
   (receive time - the frame's `published_ms`) and delivery of the frames
   published in the window (by seq: the clients record past both edges),
   CPU (psutil, s/s) of the server, the worker and redis, the server's
   RSS (idle, connected, peak), and the load the rest of the machine put on it;
4. stop every process it started (by PID; SIGTERM, then SIGKILL).

Writes one JSON file per run to bench/raw/ and, for a full run, bench/RESULTS.md.
Every process it starts dies with it (PR_SET_PDEATHSIG) and has a lifetime cap.
"""

import argparse
import array
import ctypes
import datetime as dt
import json
import os
import platform
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from stocktracker.lib import keys  # noqa: E402 - the names in Redis (no Django needed)

RAW = os.path.join(HERE, "raw")
PY = sys.executable
STREAMS = ("market", "foreign", "index")
BIG = 1_000_000  # per-IP cap for the server: every client is 127.0.0.1

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent():
    """Child-side: get SIGTERM when the bench process dies, however it dies;
    and as many open files as the hard limit allows (10,000 sockets)."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Proc:
    """A child process we started: its log, optionally its stdout lines."""

    registry = []

    def __init__(self, name, cmd, env, *, lines=False, stdin=False, logdir, cwd=ROOT):
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log_file = open(self.log_path, "w")
        self.q = queue.Queue() if lines else None
        self.popen = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if lines else self.log_file,
            stderr=self.log_file,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
            preexec_fn=_die_with_parent,
        )
        Proc.registry.append(self)
        self.ps = psutil.Process(self.popen.pid)
        if lines:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.popen.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def wait_line(self, prefix, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited (rc={self.popen.poll()}); see {self.log_path}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
            self.log_file.write(line + "\n")
        raise TimeoutError(f"no {prefix!r} from {self.name} within {timeout:.0f} s")

    def send(self, text):
        try:
            self.popen.stdin.write(text + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def alive(self):
        return self.popen.poll() is None

    def stop(self, timeout=20):
        if self.alive():
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop in {timeout} s: SIGKILL")
                self.popen.kill()
                self.popen.wait(10)
        self.log_file.close()

    @classmethod
    def stop_all(cls, timeout=20):
        for proc in reversed(cls.registry):
            proc.stop(timeout)
        cls.registry.clear()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, proc, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited (rc={proc.popen.poll()}); see {proc.log_path}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def cpu_s(ps):
    try:
        t = ps.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return float("nan")


def rss_mb(ps):
    try:
        return ps.memory_info().rss / 2**20
    except psutil.Error:
        return float("nan")


def machine_busy_s():
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0)


def steal_s():
    """CPU time the hypervisor gave to other guests (part of machine_busy_s): a noisy host, not our load."""
    return getattr(psutil.cpu_times(), "steal", 0.0)


def pct(sorted_values, q):
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 1)


# --- environment ---------------------------------------------------------------------


def base_env(args):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="stocktracker.settings",
        DEBUG="false",
        SECRET_KEY=os.environ.get("SECRET_KEY") or "bench-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        WS_MAX_CONNECTIONS_PER_IP=str(BIG),
        WS_MAX_UNAUTHENTICATED_PER_IP=str(BIG),  # per-IP too: a storm from one address is all handshakes
        LOG_LEVEL=args.log_level,
        FEED_SOURCE="simulator",
        SIMULATOR_CLOCK="demo",
        FEED_INTERVAL="1",
        # the demo day starts at 09:10; at 30x it reaches continuous trading (every stream moving) in ~10 s
        SIMULATOR_SPEED=os.environ.get("SIMULATOR_SPEED", "30"),
        FEED_IN_PROCESS="false",
        PYTHONUNBUFFERED="1",
    )
    # Production settings: every timer (heartbeat, lease, re-check) at its default. Only the
    # per-IP cap is raised (every client is 127.0.0.1) and the token's cap (bench/seed.py).
    if args.db_conn_max_age is not None:
        env["DATABASE_CONN_MAX_AGE"] = str(args.db_conn_max_age)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def redis_client():
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)


def clear_redis(r):
    """Drop the app's and the channel layer's keys (prefix `stk`) left by the previous run."""
    deleted = 0
    batch = []
    for key in r.scan_iter(match="stk*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += r.delete(*batch)
            batch = []
    if batch:
        deleted += r.delete(*batch)
    return deleted


def seqs(r):
    out = {}
    for stream in STREAMS:
        value = r.hget(keys.seq(stream), "seq")
        out[stream] = int(value) if value is not None else 0
    return out


def wait_steady_feed(r, feed, timeout):
    t0 = time.monotonic()
    history = []
    while time.monotonic() - t0 < timeout:
        if not feed.alive():
            raise RuntimeError(f"feed exited (rc={feed.popen.poll()}); see {feed.log_path}")
        now = time.monotonic()
        history.append((now, seqs(r)))
        old = [h for t, h in history if now - t >= 3.0]
        if old and all(history[-1][1][s] - old[-1][s] >= 2 for s in STREAMS):
            return round(now - t0, 1)
        time.sleep(0.5)
    raise RuntimeError(f"feed not publishing all three streams steadily after {timeout} s: {history[-1][1]}")


PROFILE_FRAMES = {  # label -> substring of a collapsed py-spy frame "function (file:line)"
    "consumer dispatch (all channel-layer messages)": "dispatch (channels/consumer.py",
    "aclose_old_connections hop": "aclose_old_connections",
    "SyncToAsync (any thread hop)": "__call__ (asgiref/sync.py",
    "executor worker thread": "_worker (concurrent/futures/thread.py",
    "fan-out (delivery.Hub.fan_out)": "fan_out (apps/streams/delivery.py",
    "heartbeat tick (delivery.Hub.tick)": "tick (apps/streams/delivery.py",
    "send threads (links.send_many)": "_send_part (apps/streams/links.py",
    "token re-check loop": "_recheck_loop (apps/streams/sessions.py",
    "lease renewal": "renew (apps/streams/sessions.py",
    "Django ORM (db/models)": "django/db/models/",
    "psycopg": "psycopg/",
    "redis-py": "redis/",
    "msgpack unpack (layer)": "unpackb",
    "pubsub layer reader": "channels_redis/pubsub.py",
    "await_many_dispatch": "await_many_dispatch",
    "daphne/autobahn/twisted": "autobahn/",
    "uvicorn websockets": "uvicorn/protocols/websockets",
    "json": "json/",
}


def start_profile(srv, runlog, phase, seconds=None):
    """py-spy the server for `seconds`, or until finish_profile(stop=True)."""
    exe = os.path.join(os.path.dirname(PY), "py-spy")
    if not os.path.exists(exe):
        log("py-spy not installed in the venv: no profile (pip install py-spy; not a project requirement)")
        return None
    out = os.path.join(runlog, f"profile-{phase}.txt")
    cmd = [exe, "record", "-p", str(srv.popen.pid), "-r", "100", "-f", "raw", "-o", out]
    if os.environ.get("PYSPY_NATIVE"):
        cmd.append("--native")  # C frames too: shows time spent in send()
    if seconds is not None:
        cmd += ["-d", str(max(1, int(seconds)))]
    return Proc(f"py-spy-{phase}", cmd, dict(os.environ), logdir=runlog), out


def finish_profile(spy, keep_path, stop=False):
    proc, out = spy
    if stop and proc.alive():
        proc.popen.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
    try:
        proc.popen.wait(60)
    except subprocess.TimeoutExpired:
        proc.stop()
    if not os.path.exists(out):
        return {"error": "py-spy wrote nothing; see " + proc.log_path}
    total = 0
    hits = dict.fromkeys(PROFILE_FRAMES, 0)
    with open(out) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            for label, needle in PROFILE_FRAMES.items():
                if needle in stack:
                    hits[label] += n
    os.replace(out, keep_path)
    return {
        "samples": total,
        "inclusive_pct": {k: round(100 * v / total, 1) for k, v in hits.items()} if total else {},
        "file": os.path.relpath(keep_path, ROOT),
    }


def redis_ps(r):
    try:
        return psutil.Process(int(r.info("server")["process_id"]))
    except (psutil.Error, KeyError, ValueError):
        return None


ASGI_APP = "stocktracker.asgi:application"


def procfile_web(port, root=ROOT):
    """The Procfile's `web:` command, as production runs it, on `port`."""
    with open(os.path.join(root, "Procfile")) as f:
        line = next(x for x in f if x.startswith("web:"))
    words = line[4:].split()
    words = [w.replace("${PORT:-8000}", str(port)) for w in words]
    if words[0] == "daphne":
        words = [PY, "-m", "daphne", *words[1:]]
    if ASGI_APP != "stocktracker.asgi:application":
        words[-1] = ASGI_APP
    return words


def server_cmd(server, port):
    if server == "bare":
        return [PY, os.path.join(HERE, "bare.py"), "--port", str(port)]
    if server == "daphne":
        return procfile_web(port)
    if server == "daphne-base":
        return procfile_web(port, BASE_TREE)
    cmd = [
        PY, "-m", "uvicorn", ASGI_APP,
        "--host", "127.0.0.1", "--port", str(port),
        "--ws", "websockets-sansio", "--ws-per-message-deflate", "false",
        "--lifespan", "off", "--backlog", "4096", "--log-level", "warning", "--no-access-log",
        "--timeout-graceful-shutdown", "5",
    ]  # fmt: skip
    return [*cmd, "--loop", uvicorn_loop()]


def uvicorn_loop():
    if UVICORN_LOOP != "auto":
        return UVICORN_LOOP
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


UVICORN_LOOP = "auto"
BASE_TREE = None  # --base-tree: another checkout whose daphne runs as "daphne-base"


def feed_cmd(feed, life):
    if feed == "runworker":
        return [PY, "manage.py", "runworker"]
    return [PY, os.path.join(HERE, "fakefeed.py"), "--interval", "1", "--max-life", str(int(life))]


# --- one run --------------------------------------------------------------------------


def run_one(args, token, r, *, server, n, logdir):
    result = {
        "server": server,
        "layer": "pubsub",
        "n": n,
        "feed": args.feed,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "client_procs": args.procs,
        "db_conn_max_age": args.db_conn_max_age,
        "asgi_app": ASGI_APP,
        "loop": uvicorn_loop() if server == "uvicorn" else "asyncio" if server == "bare" else "asyncio (twisted)",
        "command": " ".join(server_cmd(server, 0)).replace(PY, "python").replace(HERE + os.sep, "bench/"),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    tag = f"{server}-{n}"
    runlog = os.path.join(logdir, tag)
    os.makedirs(runlog, exist_ok=True)
    life = args.connect_timeout + args.warmup + args.duration + 120
    env = base_env(args)
    cleared = clear_redis(r)
    result["redis_keys_cleared"] = cleared
    port = free_port()
    try:
        # the feed first: its demo clock starts now and reaches continuous trading while we connect
        feed = Proc("feed", feed_cmd(args.feed, life), env, logdir=runlog)
        srv_cwd = BASE_TREE if server == "daphne-base" else ROOT
        srv = Proc("server", server_cmd(server, port), env, logdir=runlog, cwd=srv_cwd)
        wait_port(port, srv)
        time.sleep(2.0)
        rss_idle = rss_mb(srv.ps)
        rps = redis_ps(r)

        # clients
        scans0 = token_scans()
        per = [n // args.procs + (1 if i < n % args.procs else 0) for i in range(args.procs)]
        per = [k for k in per if k > 0]
        clients = []
        offset = 0
        t_conn = time.monotonic()
        spy = start_profile(srv, runlog, "connect") if args.profile else None
        for i, k in enumerate(per):
            cmd = [
                PY, os.path.join(HERE, "client.py"), "--port", str(port), "--n", str(k), "--offset", str(offset),
                "--duration", str(args.duration), "--warmup", str(args.warmup),
                "--raw", os.path.join(runlog, f"lat_{i}.bin"), "--connect-timeout", str(args.connect_timeout),
                "--concurrency", str(args.concurrency), "--max-life", str(int(life)),
            ]  # fmt: skip
            clients.append(Proc(f"client{i}", cmd, env | {"BENCH_TOKEN": token}, lines=True, stdin=True, logdir=runlog))
            offset += k
        conn_info = [json.loads(c.wait_line("CONNECTED", args.connect_timeout + 20)) for c in clients]
        result["connect_s"] = round(time.monotonic() - t_conn, 1)
        result["connect_s_clients"] = max(c["seconds"] for c in conn_info)
        result["connected"] = sum(c["connected"] for c in conn_info)
        result["connect_failures"] = merge_counts(c["failures"] for c in conn_info)
        result["connect_close_codes"] = merge_counts(c["close_codes"] for c in conn_info)
        result["connect_errors"] = merge_counts(c["errors"] for c in conn_info)
        if spy is not None:
            result["profile_connect"] = finish_profile(
                spy, os.path.join(RAW, f"{args.stamp}-{tag}-connect.pyspy.txt"), stop=True
            )
        log(f"{tag}: {result['connected']}/{n} connected in {result['connect_s']} s")
        scans1 = token_scans()  # the storm is over: what it cost the token table
        if scans0 is not None and scans1 is not None:
            result["token_table_queries_during_connect"] = scans1[0] - scans0[0]
            result["token_table_writes_during_connect"] = scans1[1] - scans0[1]  # last_used, once a minute
        if result["connected"] == 0:
            raise RuntimeError(f"no client connected: {conn_info}")

        # The feed publishes only while a stream has subscribers, and a stream only when its
        # data changed: wait until every stream moves steadily (>= 2 updates in 3 s), so each
        # run measures the same ~1 Hz per stream.
        result["feed_wait_s"] = wait_steady_feed(r, feed, timeout=90)
        time.sleep(1.0)
        rss_connected = rss_mb(srv.ps)

        # measurement window
        for c in clients:
            c.send("GO")
        time.sleep(args.warmup)
        watched = {"server": srv.ps, "feed": feed.ps} | ({"redis": rps} if rps else {})
        c0 = {k: cpu_s(v) for k, v in watched.items()}
        m0, st0 = machine_busy_s(), steal_s()
        q0 = seqs(r)
        w0 = time.monotonic()
        peak = rss_connected
        spy = start_profile(srv, runlog, "window", min(args.duration, 15)) if args.profile else None
        while time.monotonic() - w0 < args.duration:
            time.sleep(0.5)
            peak = max(peak, rss_mb(srv.ps))
        w1 = time.monotonic()
        c1 = {k: cpu_s(v) for k, v in watched.items()}
        m1, st1 = machine_busy_s(), steal_s()
        q1 = seqs(r)
        window = w1 - w0
        res = [json.loads(c.wait_line("RESULT", 60)) for c in clients]
        if spy is not None:
            result["profile"] = finish_profile(spy, os.path.join(RAW, f"{args.stamp}-{tag}.pyspy.txt"))
        if args.idle > 0:
            # No data flowing: stop the feed; the sockets stay open; what the server spends
            # now is its periodic work (heartbeats, pings, renewals, re-checks, daphne's timers).
            feed.stop()
            time.sleep(3.0)
            i0, t0 = cpu_s(srv.ps), time.monotonic()
            spy = start_profile(srv, runlog, "idle", args.idle - 1) if args.profile else None
            time.sleep(args.idle)
            if spy is not None:
                result["profile_idle"] = finish_profile(spy, os.path.join(RAW, f"{args.stamp}-{tag}-idle.pyspy.txt"))
            result["idle_cpu_s_per_s"] = round((cpu_s(srv.ps) - i0) / (time.monotonic() - t0), 4)
            result["idle_window_s"] = args.idle
            result["rss_mb_idle_connected"] = round(rss_mb(srv.ps), 1)
            result["rss_kib_per_idle_conn"] = round(
                (result["rss_mb_idle_connected"] - rss_idle) * 1024 / max(1, result["connected"]), 1
            )
        for c in clients:
            c.send("END")
        idle = [json.loads(c.wait_line("IDLE", 60)) for c in clients]
        result["open_after_idle"] = sum(x["open_at_end"] for x in idle)
        result["close_codes_by_end"] = merge_counts(x["close_codes"] for x in idle)

        frames = {"": array.array("d"), ".pub": array.array("d"), ".seq": array.array("q"), ".conn": array.array("i")}
        for i in range(len(clients)):
            path = os.path.join(runlog, f"lat_{i}.bin")
            for suffix, values in frames.items():
                with open(path + suffix, "rb") as f:
                    values.frombytes(f.read())
                os.remove(path + suffix)
        # The frames published in this window (by seq), wherever their delivery fell.
        connected = [index for x in res for index in x["conns"]]
        lat, pubs, per_conn = in_window(frames, q0, q1, connected)
        values = sorted(lat)
        result["slowest_frames"] = slowest_frames(lat, pubs)
        published = {s: q1[s] - q0[s] for s in STREAMS}
        on_stream = {s: sum(x["per_stream"].get(s, 0) for x in res) for s in STREAMS}
        expected = sum(on_stream[s] * published[s] for s in STREAMS)
        cpu = {k: round((c1[k] - c0[k]) / window, 3) for k in c0}
        client_cpu = round(sum(x["cpu_s_per_s"] for x in res), 3)
        machine = round((m1 - m0) / window, 3)
        msgs = len(values)
        rate = msgs / window
        result.update(
            {
                "window_s": round(window, 2),
                "published_in_window": published,
                "clients_per_stream": on_stream,
                "msgs_received": msgs,
                "msgs_expected": expected,
                "delivery_ratio": round(msgs / expected, 3) if expected else None,
                "delivered_per_s": round(rate, 1),
                "lat_ms_p50": pct(values, 0.50),
                "lat_ms_p90": pct(values, 0.90),
                "lat_ms_p99": pct(values, 0.99),
                "lat_ms_max": round(values[-1], 1) if values else None,
                "cpu_s_per_s": cpu,
                "client_cpu_s_per_s": client_cpu,
                "machine_busy_s_per_s": machine,
                "steal_s_per_s": round((st1 - st0) / window, 3),
                "other_load_s_per_s": round(machine - sum(cpu.values()) - client_cpu, 3),
                "server_us_per_msg": round(cpu["server"] / rate * 1e6, 1) if rate else None,
                "server_rss_mb": {
                    "idle": round(rss_idle, 1),
                    "connected": round(rss_connected, 1),
                    "peak": round(peak, 1),
                },
                "server_rss_mb_per_1k_conns": round((rss_connected - rss_idle) / max(1, result["connected"]) * 1000, 1),
                "open_at_end": sum(x["open_at_end"] for x in res),
                "lost_after_ready": sum(x["lost_after_ready"] for x in res),
                "close_codes": merge_counts(x["close_codes"] for x in res),
                "error_frames": merge_counts(x["errors"] for x in res),
                "per_conn_msgs_min": min(per_conn.values(), default=0),
                "per_conn_msgs_max": max(per_conn.values(), default=0),
                "heartbeats": sum(x["heartbeats"] for x in res),
                "feed_frames": sum(x["feed_frames"] for x in res),
                "bad_frames": sum(x["bad_frames"] for x in res),
                "avg_frame_bytes": round(sum(x["snapshot_bytes"] for x in res) / max(1, sum(x["msgs"] for x in res))),
                "client_maxrss_mb": max(x["maxrss_mb"] for x in res),
            }
        )
        if not srv.alive():
            result["error"] = f"server died during the run (rc={srv.popen.poll()})"
    except Exception as exc:  # noqa: BLE001 - recorded; the next run goes on
        result["error"] = repr(exc)[:1000]
        log(f"{tag}: FAILED {exc!r}")
    finally:
        t = time.monotonic()
        Proc.stop_all(timeout=30)
        result["stop_s"] = round(time.monotonic() - t, 1)
        result["log_tail"] = {name: tail(os.path.join(runlog, f"{name}.log")) for name in ("server", "feed")}
    return result


def token_scans():
    """(index + sequential scans, rows updated) of the token table so far
    (PostgreSQL's statistics): a scan per query that reads or updates it; a
    last_used write is one of each."""
    try:
        import psycopg

        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("SELECT pg_stat_force_next_flush()")
            time.sleep(1.2)  # statistics reach pg_stat_user_tables within a second
            row = conn.execute(
                "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0), n_tup_upd FROM pg_stat_user_tables "
                "WHERE relname = 'accounts_apitoken'"
            ).fetchone()
            return (int(row[0]), int(row[1])) if row else None
    except Exception:  # noqa: BLE001 - reported as unknown
        return None


def in_window(frames, q0, q1, connected):
    """The records of frames published between the two seq readings (q0, q1]
    per stream: (latencies, their published_ms, {connection: frames})."""
    lat, pubs = array.array("d"), array.array("d")
    per_conn = dict.fromkeys(connected, 0)
    for value, published, seq, conn in zip(frames[""], frames[".pub"], frames[".seq"], frames[".conn"], strict=True):
        stream = STREAMS[conn % len(STREAMS)]
        if q0[stream] < seq <= q1[stream]:
            lat.append(value)
            pubs.append(published)
            per_conn[conn] = per_conn.get(conn, 0) + 1
    return lat, pubs, per_conn


def slowest_frames(lat, pubs, top=5):
    """Per published frame (its published_ms), the latency of its last delivery:
    tells a tail made of a few stalled frames from one spread over all of them."""
    last = {}
    for value, published in zip(lat, pubs, strict=True):
        if value > last.get(published, -1.0):
            last[published] = value
    worst = sorted(last.items(), key=lambda item: -item[1])[:top]
    start = min(last) if last else 0
    return {
        "frames": len(last),
        "last_delivery_ms_p50": pct(sorted(last.values()), 0.50),
        "worst": [{"at_s": round((at - start) / 1000, 1), "last_delivery_ms": round(ms, 1)} for at, ms in worst],
    }


def merge_counts(dicts):
    out = {}
    for d in dicts:
        for k, v in d.items():
            out[str(k)] = out.get(str(k), 0) + v
    return out


def tail(path, lines=8):
    """The last few warning/error lines of a log (everything if it is short)."""
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()
    except OSError:
        return []
    keep = [line for line in text if any(w in line for w in ("Traceback", "Error", "ERROR", "WARNING", "CRITICAL"))]
    return (keep or text)[-lines:]


# --- report ---------------------------------------------------------------------------


def machine_info():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    freq = psutil.cpu_freq()
    versions = {}
    from importlib.metadata import version

    dists = ("Django", "channels", "channels-redis", "daphne", "uvicorn", "websockets", "uvloop", "redis", "Twisted")
    for dist in dists:
        try:
            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001
            versions[dist] = "-"
    try:
        redis_version = redis_client().info("server")["redis_version"]
    except Exception:  # noqa: BLE001
        redis_version = "?"
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "mhz": round(freq.current) if freq else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "versions": versions,
    }


def fmt(value, unit=""):
    if value is None:
        return "–"
    if isinstance(value, float) and value >= 100:
        value = round(value)
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def closed(r):
    lost = r.get("lost_after_ready", 0)
    if not lost:
        return "0"
    codes = ", ".join(f"{k}×{v}" for k, v in sorted(r.get("close_codes", {}).items()))
    return f"**{lost:,}** ({codes})"


def token_queries(r):
    """Token lookups during the storm, and the last_used writes apart ("1 + 1 write")."""
    queries, writes = r.get("token_table_queries_during_connect"), r.get("token_table_writes_during_connect")
    if queries is None or not writes:
        return fmt(queries)
    return f"{queries - writes:,} + {writes} write" + ("s" if writes > 1 else "")


def table(results):
    head = (
        "| server | N | connected (s) | delivered (of expected) | p50 / p99 publish→receive | server CPU s/s | "
        "µs per delivered msg | × bare | idle CPU s/s (no data) | RSS KiB per idle conn | token-table queries "
        "during connect | sockets closed by the server |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    bare = {r["n"]: r.get("server_us_per_msg") for r in results if r["server"] == "bare"}
    rows = []
    for r in results:
        if "error" in r and "lat_ms_p50" not in r:
            rows.append(f"| {r['server']} | {r['n']:,} | {r.get('connected', '–')} | **failed**: "
                        f"{r['error'][:120]} | | | | | | | | |")  # fmt: skip
            continue
        ratio = r["delivery_ratio"]
        cpu = r["cpu_s_per_s"]
        base = bare.get(r["n"])
        times = f"{r['server_us_per_msg'] / base:.2f}" if base and r.get("server_us_per_msg") else "–"
        rows.append(
            f"| {r['server']} | {r['n']:,} | {r['connected']:,} ({r.get('connect_s_clients', r['connect_s']):g}) | "
            f"{fmt(round(ratio * 100, 1) if ratio is not None else None, ' %')} | "
            f"{fmt(r['lat_ms_p50'])} / {fmt(r['lat_ms_p99'])} ms | {cpu['server']:.3f} | "
            f"{fmt(r['server_us_per_msg'])} | {times} | {fmt(r.get('idle_cpu_s_per_s'))} | "
            f"{fmt(r.get('rss_kib_per_idle_conn'))} | {token_queries(r)} | "
            f"{closed(r)} |" + (f" ⚠ {r['error'][:80]}" if "error" in r else "")
        )
    return head + "\n".join(rows) + "\n"


BEGIN = "<!-- bench:begin (generated by bench/run.py; edit outside these markers) -->"
END = "<!-- bench:end -->"


def generated_part(results, info, command, started):
    out = [BEGIN, ""]
    out.append(
        f"Run of {started}, `{command}`, {info.get('bench_minutes', '?')} min in all. "
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, Linux {info['kernel']}, "
        f"Python {info['python']}, Redis {info['redis_server']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + ".\n"
    )
    a = info.get("args", {})
    commands = {r["server"]: r.get("command", "") for r in results}
    out.append(
        "Server, clients, Redis, PostgreSQL and the feed worker share the same 2 cores, on 127.0.0.1. Each "
        "client follows one stream (round-robin over market, foreign, index; 5.8–6.1 KB snapshots, ~1 Hz each), "
        "so N clients should receive about N frames per second. *bare*: `bench/bare.py`, a plain `websockets` "
        "server calling `websockets.broadcast()` for the same frames from the same channel layer, no auth "
        "(the yardstick). *daphne*: the Procfile's `web:` line with production settings (every timer at its "
        "default: 30 s heartbeat, 90 s lease TTL, 30 s token re-check; PubSub layer), only the per-IP caps "
        "raised (all clients are 127.0.0.1).\n"
    )
    for server, command in commands.items():
        out.append(f"- {server}: `{command}`")
    out.append("")
    out.append(
        "*Latency*: receive time − the frame's `published_ms`, over every (frame, client) pair of the frames "
        f"published in the {a.get('duration', 20):g} s window (after {a.get('warmup', 3):g} s warm-up; chosen by "
        "seq, so a frame still on its way at either edge counts whole); *delivered*: those pairs received "
        "against clients × frames published. *µs per delivered msg*: "
        "server CPU / frames delivered; *× bare*: that against the bare server at the same N in the same run. "
        f"*Idle CPU*: the server's CPU over {a.get('idle', 65):g} s with the feed stopped and every socket "
        "still open (heartbeats, pings, lease renewals, re-checks). *RSS per idle conn*: (RSS with N open − "
        "RSS before any) / N. *Connected (s)*: the connect storm, "
        f"{a.get('procs')} client processes × {a.get('concurrency')} connects in flight, one Bearer token; "
        "*token-table queries*: index + sequential scans of `accounts_apitoken` from the first connect to the "
        "last (PostgreSQL statistics), lookups + the once-a-minute `last_used` write.\n"
    )
    out.append(table(results))
    out.append("Raw numbers, one JSON per run (connect times, close codes, RSS peaks, client CPU): `bench/raw/`.")
    out.append("")
    out.append(END)
    return "\n".join(out)


def write_results(path, results, info, command, started):
    """Replace the generated block of RESULTS.md; keep what people wrote around it."""
    block = generated_part(results, info, command, started)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = "# Benchmark: WebSocket fan-out of the three streams\n\n" + block + "\n\n" + text
    with open(path, "w") as f:
        f.write(text)


# --- main -----------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", default="1000,5000,10000", help="comma-separated client counts")
    p.add_argument("--servers", default="bare,daphne", help="bare, daphne (Procfile), uvicorn, daphne-base")
    p.add_argument(
        "--base-tree", help="a checkout of another commit: its Procfile daphne runs as server `daphne-base` (A/B)"
    )
    p.add_argument("--duration", type=float, default=20, help="measurement window (s)")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--concurrency", type=int, default=50, help="connects in flight per client process")
    p.add_argument("--connect-timeout", type=float, default=60, help="measure with whoever connected by then")
    p.add_argument("--idle", type=float, default=65, help="idle window after the run (feed stopped), s; 0: none")
    p.add_argument("--feed", choices=["runworker", "fake"], default="runworker")
    p.add_argument("--log-level", default="warning", help="LOG_LEVEL for the server and the worker")
    p.add_argument("--quick", action="store_true", help="N=200, 6 s windows, no RESULTS.md")
    p.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--asgi-app", default=ASGI_APP, help="experiments: e.g. bench.patched_asgi:application")
    p.add_argument("--uvicorn-loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    p.add_argument("--db-conn-max-age", type=int, default=None, help="DATABASE_CONN_MAX_AGE (default: the setting's)")
    p.add_argument("--profile", action="store_true", help="py-spy the server: connect, window, idle (skews CPU)")
    args = p.parse_args()
    if args.quick:
        if args.n == "1000,5000,10000":
            args.n = "200"
        args.duration = min(args.duration, 8)
        args.warmup = min(args.warmup, 2)
        args.no_report = True
        args.idle = min(args.idle, 5)
    args.ns = [int(x) for x in args.n.split(",") if x]
    args.server_list = [x for x in args.servers.split(",") if x]
    for s in args.server_list:
        if s not in ("bare", "daphne", "uvicorn", "daphne-base"):
            p.error(f"unknown server {s}")
    return args


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def render(summary_path, results_path):
    """Rewrite RESULTS.md's generated block from a saved summary (no new measurements)."""
    with open(summary_path) as f:
        summary = json.load(f)
    info = summary["machine"]
    info.setdefault("args", summary["args"])
    write_results(results_path, summary["results"], info, "make bench", summary["started"])


def main():
    global UVICORN_LOOP, ASGI_APP, BASE_TREE
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        render(sys.argv[2], os.path.join(HERE, "RESULTS.md"))
        return
    args = parse_args()
    UVICORN_LOOP = args.uvicorn_loop
    ASGI_APP = args.asgi_app
    BASE_TREE = os.path.abspath(args.base_tree) if args.base_tree else None
    if "daphne-base" in args.servers.split(",") and not BASE_TREE:
        sys.exit("--servers daphne-base needs --base-tree DIR")
    if not os.environ.get("REDIS_URL") or not os.environ.get("DATABASE_URL"):
        sys.exit("bench/run.py needs REDIS_URL and DATABASE_URL: run it as `make bench` "
                 "(scripts/with_services.py starts throwaway servers)")  # fmt: skip
    signal.signal(signal.SIGTERM, _terminate)
    os.makedirs(RAW, exist_ok=True)
    stamp = args.stamp = dt.datetime.now().astimezone().strftime("%Y%m%d-%H%M%S")
    logdir = tempfile.mkdtemp(prefix=f"bench-{stamp}-")
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    t_start = time.monotonic()
    results = []
    env = base_env(args)
    try:
        log("migrating")
        migrate = [PY, "manage.py", "migrate", "--no-input", "-v", "0"]
        subprocess.run(migrate, cwd=ROOT, env=env, check=True, timeout=300)
        seed = subprocess.run(
            [PY, os.path.join(HERE, "seed.py"), "--max-connections", str(max(args.ns) * 2)],
            cwd=ROOT, env=env, check=True, timeout=120, capture_output=True, text=True,
        )  # fmt: skip
        token = json.loads(next(x for x in seed.stdout.splitlines() if x.startswith("TOKEN "))[6:])["token"]
        r = redis_client()
        matrix = [(n, s) for n in args.ns for s in args.server_list]
        for i, (n, server) in enumerate(matrix, 1):
            log(f"run {i}/{len(matrix)}: {server}, N={n} (load average {os.getloadavg()[0]:.2f})")
            res = run_one(args, token, r, server=server, n=n, logdir=logdir)
            results.append(res)
            with open(os.path.join(RAW, f"{stamp}-{server}-{n}.json"), "w") as f:
                json.dump(res, f, indent=1)
            if "lat_ms_p50" in res:
                log(
                    f"  -> {res['delivered_per_s']} msg/s ({res['delivery_ratio']}), p50 {res['lat_ms_p50']} / "
                    f"p99 {res['lat_ms_p99']} ms, server {res['cpu_s_per_s']['server']} s/s "
                    f"({res['server_us_per_msg']} µs/msg), {res['server_rss_mb_per_1k_conns']} MB/1k conns, "
                    f"other load {res['other_load_s_per_s']} s/s (of it stolen by the host {res['steal_s_per_s']})"
                )
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
    finally:
        Proc.stop_all(timeout=10)
    info = machine_info()
    info["bench_minutes"] = round((time.monotonic() - t_start) / 60, 1)
    info["args"] = vars(args) | {"uvicorn_loop_used": uvicorn_loop()}
    summary = {"started": started, "machine": info, "args": vars(args), "results": results}
    with open(os.path.join(RAW, f"{stamp}-summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(table(results))
    if not args.no_report and results:
        command = "make bench" if len(sys.argv) == 1 else "python bench/run.py " + " ".join(sys.argv[1:])
        write_results(args.results, results, info, command, started)
        log(f"wrote {os.path.relpath(args.results, ROOT)}")
    log(f"raw JSON in {os.path.relpath(RAW, ROOT)}/{stamp}-*.json; process logs in {logdir}")


if __name__ == "__main__":
    main()
