"""A fan-out to thousands of sockets is kernel work (send()), so the hub splits
it over WS_SEND_THREADS threads (`links.send_many`). Every socket still
gets every frame whole and in order: also the ones whose kernel buffer took
only part of a frame, whose rest waits in Twisted's buffer."""

import json
import os
import socket
import threading
import time

import pytest
from asgiref.sync import sync_to_async

from apps.streams import links

from .clients import raw_non_reader
from .conftest import publish, set_caps


class Recorded:
    """A real socket whose send() notes the thread that called it."""

    def __init__(self, sock, threads):
        self.sock, self.threads = sock, threads

    def send(self, data):
        self.threads.add(threading.get_ident())
        return self.sock.send(data)


def _drain(sock):
    out = bytearray()
    sock.setblocking(False)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


@pytest.mark.parametrize("threads", [1, 2])
def test_send_many_writes_every_socket_and_says_how_much_each_took(monkeypatch, threads):
    monkeypatch.setattr(links, "_SPLIT_MIN", 8)  # 64 sockets are enough to split
    pairs = [socket.socketpair() for _ in range(64)]
    try:
        for ours, _ in pairs:
            ours.setblocking(False)
        for ours, theirs in pairs[:16]:  # small buffers: the kernel takes part of the frame
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        pairs[3][1].close()  # a client gone: its write fails and counts 0
        frame = links.text_frame(os.urandom(150_000))
        seen = set()
        sent = links.send_many([Recorded(ours, seen) for ours, _ in pairs], frame, threads)
        assert len(seen) == threads  # with 2, the calling thread and one more wrote
        assert sent[3] == 0
        assert any(0 < took < len(frame) for took in sent[:16])
        for i, ((_, theirs), took) in enumerate(zip(pairs, sent, strict=True)):
            if i != 3:
                assert _drain(theirs) == frame[:took]
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def _frames(data):
    """Parse unmasked server frames; (text messages, bytes left over)."""
    texts, i = [], 0
    while len(data) - i >= 2:
        b0, b1 = data[i], data[i + 1] & 0x7F
        head, size = 2, b1
        if b1 == 126:
            head, size = 4, int.from_bytes(data[i + 2 : i + 4], "big")
        elif b1 == 127:
            head, size = 10, int.from_bytes(data[i + 2 : i + 10], "big")
        if len(data) - i < head + size:
            break
        if b0 & 0x0F == 1:
            assert b0 & 0x80, "a fragmented text frame"
            texts.append(json.loads(data[i + head : i + head + size]))
        i += head + size
    return texts, data[i:]


N = 600  # > links._SPLIT_MIN: every fan-out below is split over two threads
SLOW = 40  # of them not read until the frames are out
BIG = {"rows": ["r" * 40] * 500}  # ~21 KB: more than the kernel takes at once (small_buffers_app)
SMALL_BUFFERS_APP = "apps.streams.tests.small_buffers_app:application"


@pytest.mark.django_db(transaction=True)
async def test_every_socket_of_a_split_fan_out_gets_every_frame_whole_and_in_order(processes, owner, owner_token):
    token, raw = owner_token
    await sync_to_async(set_caps)(owner, token, N + 10)
    # A large WS_SEND_BUFFER_BYTES: the slow sockets get every frame (conflation is tested elsewhere).
    server = processes.daphne(
        app=SMALL_BUFFERS_APP, WS_MAX_CONNECTIONS_PER_IP=N + 10, WS_SEND_THREADS=2, WS_SEND_BUFFER_BYTES=1 << 20
    )
    socks = []
    try:
        for _ in range(N):
            socks.append(raw_non_reader(server.port, raw, rcvbuf=4096))
        buffers = dict.fromkeys(range(N), b"")
        deadline = time.monotonic() + 20
        while not all(b'"type":"welcome"' in buffers[i] for i in range(N)):  # every socket streams
            assert time.monotonic() < deadline, "not every socket got its welcome"
            for i in range(N):
                buffers[i] += _drain(socks[i])
            time.sleep(0.1)
        seqs = []
        for n in (1, 2, 3):
            seqs.append((await publish(data={"n": n, **BIG}))[1])  # (epoch, seq)
            time.sleep(0.3)
            for i in range(SLOW, N):  # these read as they go; the first SLOW do not yet
                buffers[i] += _drain(socks[i])
        got = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for i in range(N):
                buffers[i] += _drain(socks[i])
                texts, _ = _frames(buffers[i])
                got[i] = [t["seq"] for t in texts if t["type"] == "snapshot" and t["seq"] in seqs]
            if all(got[i] == seqs for i in range(N)):
                break
            time.sleep(0.2)
        wrong = {i: seq for i, seq in got.items() if seq != seqs}
        assert not wrong, f"{len(wrong)} sockets did not get {seqs} in order, e.g. {list(wrong.items())[:3]}"
        assert all(_frames(buffers[i])[1] == b"" for i in range(N))  # no torn frame anywhere
    finally:
        for sock in socks:
            sock.close()
    assert "Traceback" not in server.log_path.read_text()
