"""A daphne whose PostgreSQL link can be cut the way a vanished host cuts it.

    python -m apps.streams.tests.partition DIR PORT [--two-hosts] -- DAPHNE-ARGS...

Runs daphne (with REDIS_URL and DATABASE_URL from the environment) in a
private network namespace (`unshare --net`), where it reaches Redis and
PostgreSQL through loopback relays, and makes it reachable on 127.0.0.1:PORT
of the caller's namespace once it listens. SIGUSR1 drops every packet the
PostgreSQL relay's port sends, with no reset and no error: daphne's
connections hear nothing more, not even acknowledgements or a new connect's
SYN-ACK, which is what a client sees when the database host loses power or
the network splits. SIGUSR2 lets them through again (TCP then retransmits
what was lost). With `--two-hosts`, daphne's DATABASE_URL names two hosts,
two relays to the same PostgreSQL, and SIGUSR1 cuts only the first: the old
primary vanished, the new one answers. A process that is merely stopped
(SIGSTOP) cannot show this: its kernel still acknowledges every packet and
keepalive probe, so the connection looks healthy.

Both namespaces talk through Unix sockets in DIR, which every namespace can
reach; the packet filter is a policy-routing rule, so only `ip` (iproute2)
and the right to make a network namespace are needed (root, or an
unprivileged user namespace).
"""

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


async def _pump(reader, writer):
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _relay(open_upstream):
    async def handle(reader, writer):
        try:
            up_reader, up_writer = await open_upstream()
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    return handle


def _target(url):
    parts = urlsplit(url)
    return parts.hostname, parts.port


def _with_ports(url, *ports):
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{hosts}" if userinfo else hosts))


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


async def outer(folder, port, two_hosts, daphne_args):
    """Caller's namespace: Unix sockets -> Redis, PostgreSQL; 127.0.0.1:PORT -> daphne."""
    loop = asyncio.get_running_loop()
    redis, postgres = _target(os.environ["REDIS_URL"]), _target(os.environ["DATABASE_URL"])
    await asyncio.start_unix_server(_relay(lambda: asyncio.open_connection(*redis)), folder / "redis.sock")
    await asyncio.start_unix_server(_relay(lambda: asyncio.open_connection(*postgres)), folder / "pg.sock")
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net"]
    inner_proc = await asyncio.create_subprocess_exec(
        *unshare,
        sys.executable,
        "-m",
        "apps.streams.tests.partition",
        "--inner",
        *(["--two-hosts"] if two_hosts else []),
        str(folder),
        "0",
        "--",
        *daphne_args,
    )
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(sig, inner_proc.send_signal, sig)
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    daphne_sock = folder / "daphne.sock"
    while not daphne_sock.exists():
        if inner_proc.returncode is not None:
            sys.exit(f"the namespace exited with {inner_proc.returncode} before daphne listened")
        await asyncio.sleep(0.1)
    await asyncio.start_server(_relay(lambda: asyncio.open_unix_connection(daphne_sock)), "127.0.0.1", port)
    print(f"listening {port}", flush=True)
    await asyncio.wait(
        [asyncio.ensure_future(done.wait()), asyncio.ensure_future(inner_proc.wait())],
        return_when=asyncio.FIRST_COMPLETED,
    )
    if inner_proc.returncode is None:
        inner_proc.send_signal(signal.SIGTERM)
        await inner_proc.wait()


async def inner(folder, two_hosts, daphne_args):
    """The private namespace: loopback relays to the Unix sockets, daphne, the packet filter."""
    loop = asyncio.get_running_loop()
    _ip("link", "set", "lo", "up")
    # The rule that sends loopback traffic to the `local` table comes first;
    # move it after the slot where the drop rules go.
    _ip("rule", "add", "pref", "100", "lookup", "local")
    _ip("rule", "del", "pref", "0")
    redis = await asyncio.start_server(_relay(lambda: asyncio.open_unix_connection(folder / "redis.sock")), "127.0.0.1")
    pg_ports = []
    for _ in range(2 if two_hosts else 1):
        pg = await asyncio.start_server(_relay(lambda: asyncio.open_unix_connection(folder / "pg.sock")), "127.0.0.1")
        pg_ports.append(pg.sockets[0].getsockname()[1])
    env = dict(os.environ)
    env["REDIS_URL"] = _with_ports(env["REDIS_URL"], redis.sockets[0].getsockname()[1])
    env["DATABASE_URL"] = _with_ports(env["DATABASE_URL"], *pg_ports)
    daphne = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daphne", "-u", str(folder / "daphne.sock"), *daphne_args, env=env
    )
    cut_port = str(pg_ports[0])
    # Only what the relay sends: a rule on what daphne sends would fail its
    # connects at once (no route) instead of leaving them unanswered.
    rules = [("ipproto", "tcp", "sport", cut_port, "blackhole", "pref", "10")]

    def cut():
        for rule in rules:
            _ip("rule", "add", *rule)
        print("database link cut", flush=True)

    def heal():
        for rule in rules:
            _ip("rule", "del", *rule)
        print("database link healed", flush=True)

    loop.add_signal_handler(signal.SIGUSR1, cut)
    loop.add_signal_handler(signal.SIGUSR2, heal)
    loop.add_signal_handler(signal.SIGTERM, daphne.send_signal, signal.SIGTERM)
    sys.exit(await daphne.wait())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--inner", action="store_true")
    parser.add_argument("--two-hosts", action="store_true")
    parser.add_argument("folder", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("daphne_args", nargs="+")
    args = parser.parse_args()
    if args.inner:
        asyncio.run(inner(args.folder, args.two_hosts, args.daphne_args))
    else:
        asyncio.run(outer(args.folder, args.port, args.two_hosts, args.daphne_args))


if __name__ == "__main__":
    main()
