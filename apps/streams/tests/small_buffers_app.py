"""The project's ASGI application, with each WebSocket's kernel send buffer
cut to a few KB (SO_SNDBUF; setting it also stops Linux growing it). On
loopback the kernel otherwise takes megabytes for a client that does not
read, so a test would never see it take part of a frame."""

import socket

from apps.streams.port import _daphne_protocol
from stocktracker.asgi import application as project

SNDBUF = 4096  # the kernel doubles it: 8 KB


async def application(scope, receive, send):
    if scope["type"] == "websocket":
        protocol = _daphne_protocol(send)
        if protocol is not None:
            protocol.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    return await project(scope, receive, send)
