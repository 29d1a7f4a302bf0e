"""Credentials: session, Bearer header, first `auth` message, ?token=; failures
are accepted, get one `error` frame and close with the documented code."""

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from .conftest import ORIGIN, closed_with, communicator, frame, publish, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def _streams(comm):
    connected, _ = await comm.connect()
    assert connected
    welcome = await frame(comm)
    assert welcome["type"] == "welcome" and welcome["stream"] == "market" and welcome["protocol"] == 1
    snapshot = await frame(comm)
    assert snapshot["type"] == "snapshot" and snapshot["seq"] == 1
    await comm.disconnect()


async def test_it_streams_to_a_bearer_token(owner_token):
    await publish()
    await _streams(communicator(token=owner_token[1]))


async def test_it_streams_to_a_token_in_the_query_string(owner_token):
    await publish()
    await _streams(communicator(token=owner_token[1], how="query"))


async def test_it_streams_after_a_first_auth_message(owner_token):
    await publish()
    comm = communicator()
    await comm.connect()
    await comm.send_json_to({"type": "auth", "token": owner_token[1]})
    assert (await frame(comm))["type"] == "welcome"
    assert (await frame(comm))["type"] == "snapshot"
    await comm.disconnect()


async def test_it_streams_to_a_session_from_an_allowed_origin(owner):
    await publish()
    cookie = await session_cookie(owner)
    await _streams(communicator(headers=[cookie, (b"origin", ORIGIN.encode())]))


async def test_it_closes_4001_with_an_error_frame_for_a_bad_token():
    comm = communicator(token="stk_" + "A" * 38)
    await comm.connect()
    code, frames = await closed_with(comm)
    assert code == 4001
    assert frames == [{"type": "error", "code": "auth_failed", "message": "token not recognised"}]


async def test_it_closes_4001_when_no_auth_message_arrives_in_time(settings):
    settings.WS_AUTH_TIMEOUT = 0.3
    comm = communicator()
    await comm.connect()
    code, frames = await closed_with(comm)
    assert code == 4001 and frames[0]["code"] == "auth_timeout"


async def test_it_closes_4001_when_a_message_comes_before_auth():
    comm = communicator()
    await comm.connect()
    await comm.send_json_to({"type": "ping"})
    code, frames = await closed_with(comm)
    assert code == 4001 and frames[0]["code"] == "auth_required"


async def test_it_closes_4004_for_a_revoked_token(owner_token):
    token, raw = owner_token
    token.revoked_at = timezone.now()
    await sync_to_async(token.save)()
    comm = communicator(token=raw)
    await comm.connect()
    code, frames = await closed_with(comm)
    assert code == 4004 and frames[0]["type"] == "error"


async def test_it_closes_4005_for_an_expired_token(owner_token):
    token, raw = owner_token
    token.expires_at = timezone.now() - timedelta(seconds=1)
    await sync_to_async(token.save)()
    comm = communicator(token=raw, how="query")
    await comm.connect()
    code, _ = await closed_with(comm)
    assert code == 4005


async def test_it_closes_4003_when_the_stream_is_not_allowed_for_the_token(issue):
    _, raw = await sync_to_async(issue)(streams=["index"])
    comm = communicator("/ws/market", token=raw)
    await comm.connect()
    code, frames = await closed_with(comm)
    assert code == 4003 and frames[0]["code"] == "stream_forbidden"


async def test_it_accepts_a_trailing_slash_on_every_stream(owner_token):
    for stream in ("market", "foreign", "index"):
        comm = communicator(f"/ws/{stream}/", token=owner_token[1])
        connected, _ = await comm.connect()
        assert connected
        assert (await frame(comm))["stream"] == stream
        await comm.disconnect()
