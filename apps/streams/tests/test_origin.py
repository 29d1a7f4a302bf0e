"""Origin: a session cookie counts only from WS_ALLOWED_ORIGINS; a token is no
ambient credential, so token clients are not checked (with or without Origin)."""

import logging

import pytest

from .conftest import closed_with, communicator, frame, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

EVIL = [
    "https://evil.example",
    "null",
    "http://127.0.0.1:8000.evil.com",
    "https://127.0.0.1:8000",
    "http://127.0.0.1:8001",
]


@pytest.mark.parametrize("origin", EVIL)
async def test_it_refuses_a_session_from_a_cross_site_page_and_logs_the_origin(owner, origin, caplog):
    cookie = await session_cookie(owner)
    comm = communicator(headers=[cookie, (b"origin", origin.encode())])
    with caplog.at_level(logging.WARNING, logger="apps.streams"):
        await comm.connect()
        code, frames = await closed_with(comm)
    assert code == 4003
    assert frames == [
        {"type": "error", "code": "origin_forbidden", "message": "origin not allowed for session sign-in"}
    ]
    assert any(repr(origin) in record.getMessage() for record in caplog.records)


async def test_it_refuses_a_session_without_an_origin(owner):
    comm = communicator(headers=[await session_cookie(owner)])
    await comm.connect()
    code, _ = await closed_with(comm)
    assert code == 4003


async def test_a_token_client_may_send_any_origin_or_none(owner_token):
    for headers in ([], [(b"origin", b"https://partner.example")]):
        comm = communicator(token=owner_token[1], headers=headers)
        await comm.connect()
        assert (await frame(comm))["type"] == "welcome"
        await comm.disconnect()


async def test_a_token_wins_over_a_cross_site_session(owner, owner_token):
    cookie = await session_cookie(owner)
    comm = communicator(token=owner_token[1], headers=[cookie, (b"origin", b"https://evil.example")])
    await comm.connect()
    welcome = await frame(comm)
    assert welcome["type"] == "welcome"
    await comm.disconnect()
