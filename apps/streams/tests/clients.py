"""Real-socket clients for the end-to-end tests."""

import asyncio
import base64
import json
import os
import socket
import time

import psutil
import websockets
from websockets.exceptions import ConnectionClosed


def connect(url, token=None, how="bearer", origin=None, **kwargs):
    headers = {}
    if token and how == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    if token and how == "query":
        url = f"{url}?token={token}"
    if origin:
        headers["Origin"] = origin
    kwargs.setdefault("open_timeout", 10)
    return websockets.connect(url, additional_headers=headers, max_size=2**22, **kwargs)


async def recv_json(ws, timeout=3):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def fanned_out(ws, timeout):
    """Reads until the socket has had a snapshot after its first one and
    further on (a higher seq, or a new epoch): one the fan-out delivered, not
    only the one sent on connect. Returns (first, fanned-out) snapshots;
    raises TimeoutError after `timeout` seconds."""
    first = None
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] != "snapshot":
                continue
            if first is None:
                first = frame
            elif frame["epoch"] != first["epoch"] or frame["seq"] > first["seq"]:
                return first, frame


async def close_code(ws, timeout=5):
    """Reads until the server closes; returns (code, frames read)."""
    frames = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                frames.append(json.loads(await ws.recv()))
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), frames


async def outcome(url, token, timeout=10):
    """Connect once: 'open' (welcome received; socket returned) or the close code."""
    ws = await connect(url + "/ws/market", token)
    try:
        first = await recv_json(ws, timeout)
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), None
    if first["type"] == "welcome":
        return "open", ws
    code, _ = await close_code(ws, timeout)
    return code, None


def raw_non_reader(port, token, path="/ws/market", rcvbuf=4096):
    """A TCP client that completes the handshake, then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    sock.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: leave every frame after the handshake unread
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def established(proc, port):
    """Open client sockets a daphne process holds on `port`."""
    return sum(
        1
        for conn in psutil.Process(proc.pid).net_connections(kind="tcp")
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    )


def rss_mb(proc):
    return psutil.Process(proc.pid).memory_info().rss / 2**20


def wait_until(check, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()
