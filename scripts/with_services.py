#!/usr/bin/env python3
"""Run a command with real Redis and PostgreSQL servers available.

    python scripts/with_services.py -- pytest -q

Uses REDIS_URL / DATABASE_URL when they are set. Otherwise starts a throwaway
`redis-server` and PostgreSQL cluster (initdb/postgres from Debian's packages)
on free loopback ports in a temporary folder, exports their URLs to the
command, and stops them and removes the folder afterwards, whatever happens.
TEST_WORKERS=N starts N Redis servers, listed in REDIS_URLS: one per pytest
worker (tests/workers.py).
Missing Debian packages (redis-server, postgresql, chromium) are installed
by scripts/system_packages.py.
"""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also when loaded as a module by tests
import system_packages


def log(message):
    print(f"[services] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def needed_packages(need_redis, need_pg, need_browser):
    return [
        package
        for package, needed in (("redis-server", need_redis), ("postgresql", need_pg), ("chromium", need_browser))
        if needed
    ]


def wait_for(check, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout} s")


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _redis_count(env):
    raw = env.get("TEST_WORKERS", "1")
    if not raw.isdigit() or int(raw) < 1:
        sys.exit(f"TEST_WORKERS must be a whole number of at least 1, not {raw!r}")
    return int(raw)


def start_redis(tmp, procs, n=0):
    port = free_port()
    workdir = os.path.join(tmp, f"redis-{n}")
    os.makedirs(workdir)
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--logfile",
            os.path.join(workdir, "redis.log"),
        ],
    )
    procs.append((proc, "redis-server"))  # stopped even if it never comes up
    wait_for(lambda: port_open(port), "redis-server")
    log(f"redis-server on 127.0.0.1:{port}")
    return f"redis://127.0.0.1:{port}/0"


def start_postgres(tmp, procs):
    port = free_port()
    data = os.path.join(tmp, "pg")
    os.makedirs(data)
    # PostgreSQL refuses to run as root: run it as the `postgres` user, directly
    # (no runuser wrapper in between, so our signals reach the server itself).
    as_user = {}
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        shutil.chown(data, "postgres")
        as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
    subprocess.run(
        [pg_bin("initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"],
        check=True,
        stdout=subprocess.DEVNULL,
        **as_user,
    )
    proc = subprocess.Popen(
        [
            pg_bin("postgres"),
            "-D",
            data,
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            tmp,
            # A throwaway cluster: durability buys nothing, speed does.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(tmp, "postgres.log"), "w"),
        **as_user,
    )
    procs.append((proc, "postgres"))
    wait_for(lambda: port_open(port), "postgres")
    url = f"postgres://postgres@127.0.0.1:{port}/stocktracker"
    subprocess.run(
        [pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "stocktracker"],
        check=True,
        **as_user,
    )
    log(f"postgres on 127.0.0.1:{port}")
    return url


def stop(proc, name):
    if proc.poll() is None:
        # SIGINT is PostgreSQL's "fast shutdown"; redis-server exits on it too.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log(f"stopped {name}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_child(child):
    """SIGINT first (pytest then runs its teardown and stops what it started),
    then SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        child.send_signal(sig)
        try:
            return child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            continue
    return 1


def main(argv):
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        sys.exit(__doc__)
    env = dict(os.environ)
    need_redis = not env.get("REDIS_URL")
    need_pg = not env.get("DATABASE_URL")
    system_packages.ensure(needed_packages(need_redis, need_pg, need_browser=env.get("SKIP_BROWSER_INSTALL") != "1"))
    tmp = tempfile.mkdtemp(prefix="stocktracker-services-")
    procs = []
    # A CI timeout or `kill` sends SIGTERM: stop the servers on the way out too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if need_redis:
            # One Redis per pytest worker (tests/workers.py): pub/sub is server-wide.
            urls = [start_redis(tmp, procs, n) for n in range(_redis_count(env))]
            env["REDIS_URL"], env["REDIS_URLS"] = urls[0], " ".join(urls)
        if need_pg:
            env["DATABASE_URL"] = start_postgres(tmp, procs)
        child = subprocess.Popen(argv, env=env)
        try:
            return child.wait()
        except KeyboardInterrupt:
            return _stop_child(child)
    finally:
        for proc, name in reversed(procs):
            stop(proc, name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
