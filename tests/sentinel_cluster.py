"""A Redis Sentinel setup on loopback for tests: a master, a replica and three
Sentinels, all from Debian's redis-server binary (`redis-server --sentinel`).

`with SentinelCluster(folder) as cluster:` starts a fresh set in `folder`, on
free ports, waits until every Sentinel knows the master, the replica and the
other two Sentinels (about 2 s), and stops every process on the way out, even
when the test failed. The `sentinel_cluster` fixture does the same in a
temporary folder (import it, or wrap the class in a fixture of your own):

    @pytest.fixture
    def cluster(tmp_path):
        with SentinelCluster(tmp_path) as found:
            yield found

    def test_x(cluster):
        url = cluster.url        # redis+sentinel://127.0.0.1:p1,.../stk/0
        new = cluster.failover()  # (host, port) of the promoted replica

Timers are short (down after 1 s, failover timeout 3 s) so that a test sees a
failover within seconds. `python -m tests.sentinel_cluster` starts one and
prints its URL until Ctrl-C (for trying things by hand).
"""

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

SERVICE = "stk"
HOST = "127.0.0.1"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
START_TIMEOUT = 30.0
FAILOVER_WAIT = 30.0


def _binary():
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(found):
        raise RuntimeError("redis-server is not installed: apt-get install redis-server")
    return found


def _free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _until(what, check, timeout):
    """Calls `check` until it returns something true; returns that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            found = check()
        except (redis.RedisError, OSError) as exc:
            found, last = None, exc
        if found:
            return found
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout:.0f} s (last error: {last!r})")


class SentinelCluster:
    """One master, one replica, three Sentinels monitoring them as SERVICE
    (`sentinels=0`: the master and the replica alone)."""

    def __init__(self, root=None, sentinel_password=None, sentinels=3):
        self.own_root = root is None  # removed in stop() only if made here
        self.root = Path(root or tempfile.mkdtemp(prefix="stocktracker-sentinel-"))
        self.sentinel_password = sentinel_password
        self.sentinels = sentinels  # 0: a master and its replica alone
        self.procs = {}  # port -> Popen
        self.data_ports = []
        self.sentinel_ports = []

    # --- lifecycle --------------------------------------------------------------

    def start(self):
        try:
            master = self._server("master")
            self._server("replica", replicaof=master)
            _until("the replica in sync", lambda: self._linked(self.data_ports[1]), START_TIMEOUT)
            for n in range(self.sentinels):
                self._sentinel(n, master)
            if self.sentinels:
                self.wait_agreed(master)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process would not see SIGTERM
                proc.send_signal(signal.SIGTERM)
        for port, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            del self.procs[port]
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _spawn(self, port, args, name):
        workdir = self.root / name
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "log"
        with open(workdir / "stderr", "wb") as stderr:  # a config error is reported there, not in the log
            proc = subprocess.Popen(
                [_binary(), *args, "--logfile", str(log)], cwd=workdir, stdout=subprocess.DEVNULL, stderr=stderr
            )
        self.procs[port] = proc  # stopped in teardown even if it never answers
        _until(f"{name} on port {port} answering", lambda: self._ping(port, name), START_TIMEOUT)

    def _ping(self, port, name):
        if self.procs[port].poll() is not None:
            said = "".join(
                path.read_text(errors="replace")[-2000:]
                for path in (self.root / name).glob("*")
                if path.name != "dump.rdb"
            )
            raise RuntimeError(f"{name} exited with {self.procs[port].returncode}:\n{said}")
        password = self.sentinel_password if port in self.sentinel_ports else None
        with redis.Redis(HOST, port, password=password, socket_timeout=1) as client:
            return client.ping()

    def _server(self, name, replicaof=None):
        port = _free_port()
        self.data_ports.append(port)
        args = ["--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", "."]
        # A replica's full sync starts at once, not after Redis's default 5 s wait for more replicas.
        args += ["--repl-diskless-sync-delay", "0"]
        if replicaof:
            args += ["--replicaof", replicaof[0], str(replicaof[1])]
        self._spawn(port, args, name)
        return (HOST, port)

    def _sentinel(self, n, master):
        port = _free_port()
        self.sentinel_ports.append(port)
        name = f"sentinel-{n}"
        conf = self.root / name / "sentinel.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {port}",
            f"bind {HOST}",
            "dir .",
            f"sentinel monitor {SERVICE} {master[0]} {master[1]} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        if self.sentinel_password:
            # The Sentinels' own password; they also use it to talk to each other.
            quoted = '"' + self.sentinel_password.replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines += [f"requirepass {quoted}", f"sentinel sentinel-pass {quoted}"]
        conf.write_text("\n".join(lines) + "\n")  # Sentinel rewrites it: it must be a writable file
        self._spawn(port, [str(conf), "--sentinel"], name)

    # --- what the Sentinels say ------------------------------------------------------

    def sentinel(self, port):
        return redis.Redis(HOST, port, password=self.sentinel_password, socket_timeout=2, decode_responses=True)

    def data(self, port):
        """A plain client of one data server (not through the Sentinels)."""
        return redis.Redis(HOST, port, socket_timeout=2, decode_responses=True)

    def _linked(self, port, master=None, offset=0):
        """`port` is a replica (of `master`), linked, and has applied the
        replication stream up to `offset`."""
        with self.data(port) as client:
            info = client.info("replication")
        if master is not None and info.get("master_port") != master[1]:
            return False
        linked = info.get("role") == "slave" and info.get("master_link_status") == "up"
        return linked and info.get("slave_repl_offset", -1) >= offset

    def role(self, port):
        with self.data(port) as client:
            return client.execute_command("ROLE")[0]

    def views(self):
        """{sentinel port: (host, port) it names as the master}."""
        found = {}
        for port in self.sentinel_ports:
            with self.sentinel(port) as client:
                host, master_port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                found[port] = (host, int(master_port))
        return found

    def _agreed(self, master):
        if set(self.views().values()) != {master}:
            return False
        for port in self.sentinel_ports:
            with self.sentinel(port) as client:
                state = client.sentinel_master(SERVICE)
                replicas = client.sentinel_slaves(SERVICE)
            if state["num-other-sentinels"] < len(self.sentinel_ports) - 1:
                return False
            healthy = [r for r in replicas if not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])]
            if not healthy:
                return False
        return True

    def wait_agreed(self, master, timeout=START_TIMEOUT):
        """Until every Sentinel names `master`, knows the other Sentinels and a
        healthy replica (without one, SENTINEL FAILOVER answers NOGOODSLAVE)."""
        _until(f"the sentinels agreeing on {master}", lambda: self._agreed(master), timeout)

    @property
    def master(self):
        """(host, port) of the master, as the Sentinels name it now."""
        views = set(self.views().values())
        if len(views) != 1:
            raise RuntimeError(f"the sentinels disagree: {views}")
        return views.pop()

    @property
    def url(self):
        """The REDIS_URL that reaches this master through the Sentinels (no password)."""
        hosts = ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    # --- faults -----------------------------------------------------------------

    def failover(self, timeout=FAILOVER_WAIT):
        """SENTINEL FAILOVER, then wait until every Sentinel names the promoted
        replica and it answers as a master; returns its (host, port). The old
        master is still a master at that moment: the Sentinels turn it into a
        replica (and drop its clients) some seconds later (`wait_demoted`)."""
        old = self.master
        deadline = time.monotonic() + timeout
        # A master demoted by an earlier failover takes writes until the
        # Sentinels reconfigure it, yet they may already promote it; and a
        # replica promoted before it applied the test's last write loses it.
        with self.data(old[1]) as client:
            offset = client.info("replication")["master_repl_offset"]
        others = [port for port in self.data_ports if port != old[1]]
        _until("every replica in sync", lambda: all(self._linked(port, old, offset) for port in others), timeout)

        def start():
            with self.sentinel(self.sentinel_ports[0]) as client:
                try:
                    return client.execute_command("SENTINEL", "FAILOVER", SERVICE)
                except redis.ResponseError as exc:
                    if "NOGOODSLAVE" in str(exc) or "INPROG" in str(exc):
                        return None  # the replica is not known as healthy yet: ask again
                    raise

        _until("SENTINEL FAILOVER accepted", start, timeout)
        return self.wait_promoted(old, max(1.0, deadline - time.monotonic()))

    def wait_promoted(self, old, timeout=FAILOVER_WAIT):
        """Until every Sentinel names another master than `old` and it
        answers as a master (after `failover()`, or a master killed); returns
        its (host, port)."""

        def promoted():
            views = set(self.views().values())
            if len(views) != 1 or old in views:
                return None
            new = views.pop()
            return new if self.role(new[1]) == "master" else None

        return _until(f"a new master instead of {old}", promoted, timeout)

    def wait_demoted(self, address, timeout=FAILOVER_WAIT):
        """Until `address` is a replica in sync with the current master."""
        _until(f"{address} a replica in sync", lambda: self._linked(address[1]), timeout)

    def demote(self, address, master):
        """Make `address` a replica of `master` now, as the Sentinels later
        would, but without dropping its clients: they see READONLY."""
        with self.data(address[1]) as client:
            client.execute_command("REPLICAOF", master[0], str(master[1]))

    def signal(self, address, sig):
        """Send `sig` to the server at `address` (SIGSTOP / SIGCONT / SIGKILL)."""
        self.procs[address[1]].send_signal(sig)


@pytest.fixture
def sentinel_cluster(tmp_path_factory):
    with SentinelCluster(tmp_path_factory.mktemp("sentinel")) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def behind_sentinel(root, settings):
    """A fresh SentinelCluster in `root`, with this process's `settings` (the
    pytest-django fixture) on it: REDIS_URL and the channel layer reach its
    master through the Sentinels. For async tests:

        @pytest.fixture
        async def cluster(tmp_path, settings):
            async with behind_sentinel(tmp_path, settings) as found:
                yield found
    """
    from channels.layers import channel_layers

    from stocktracker.lib import redis as redis_lib
    from stocktracker.lib.state import _redis_states, reset_state

    cluster = SentinelCluster(root)
    await asyncio.to_thread(cluster.start)
    layer = settings.CHANNEL_LAYERS["default"]
    hosts = [redis_lib.channel_layer_host(cluster.url)]
    settings.REDIS_URL = cluster.url
    settings.CHANNEL_LAYERS = {"default": {**layer, "CONFIG": {**layer["CONFIG"], "hosts": hosts}}}
    channel_layers.backends.clear()
    reset_state()
    try:
        yield cluster
    finally:
        # Close this loop's connections while their servers still run.
        for backend in list(channel_layers.backends.values()):
            await backend.flush()
        for state in list(_redis_states.objects.values()):
            await state.redis.aclose()
        channel_layers.backends.clear()
        reset_state()
        await asyncio.to_thread(cluster.stop)


if __name__ == "__main__":
    with SentinelCluster() as cluster:
        print(cluster.url, "master", cluster.master, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
