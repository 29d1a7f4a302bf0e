"""Helpers for the streams tests: an in-process communicator and frame readers."""

import asyncio
import contextlib
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from apps.streams.publish import publish_snapshot

ORIGIN = "http://127.0.0.1:8000"  # in the default WS_ALLOWED_ORIGINS


def communicator(path="/ws/market", *, token=None, how="bearer", headers=(), client=("10.0.0.1", 5000)):
    from stocktracker.asgi import application

    headers = list(headers)
    if token and how == "bearer":
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if token and how == "query":
        path = f"{path}?token={token}"
    comm = WebsocketCommunicator(application, path, headers=headers)
    comm.scope["client"] = list(client)
    return comm


async def frame(comm, timeout=2):
    return json.loads(await comm.receive_from(timeout))


async def closed_with(comm, timeout=3):
    """Reads to the close; returns (code, [frames before it])."""
    frames = []
    while True:
        message = await comm.receive_output(timeout)
        if message["type"] == "websocket.close":
            return message.get("code"), frames
        if message["type"] == "websocket.send":
            frames.append(json.loads(message["text"]))


async def session_cookie(user):
    def login():
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    value = await sync_to_async(login)()
    return (b"cookie", f"sessionid={value}".encode())


async def publish(stream="market", data=None, feed="live"):
    return await publish_snapshot(
        stream, data or {"n": 1}, day="2026-11-27", source_ms=1764215400950, feed=feed, simulated=True
    )


@contextlib.asynccontextmanager
async def publishing(hz=4, data=None, tolerate_errors=False):
    """Publishes a market snapshot `hz` times a second while the block runs.
    `tolerate_errors`: keep going through a Redis outage (fault tests)."""

    async def loop():
        while True:
            try:
                await asyncio.wait_for(publish(data=data), 1)
            except Exception:
                if not tolerate_errors:
                    raise
            await asyncio.sleep(1 / hz)

    task = asyncio.ensure_future(loop())
    try:
        yield
    finally:
        task.cancel()


@pytest.fixture
def issue(owner):
    """Issue more tokens for `owner`: issue(streams=..., max_connections=...) -> (token, raw)."""
    from apps.accounts.models import ApiToken

    def make(**kwargs):
        kwargs.setdefault("label", "test")
        return ApiToken.issue(owner, **kwargs)

    return make


def set_caps(owner, token, n):
    """Raise `owner`'s and `token`'s connection caps to `n` (many sockets from one test)."""
    from apps.accounts.models import UserLimits

    limits = UserLimits.for_user(owner)
    limits.max_connections = n
    limits.save()
    token.max_connections = n
    token.save()
