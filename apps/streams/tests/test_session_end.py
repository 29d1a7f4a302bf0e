"""A dashboard socket lives as long as the browser session it signed in
with: logging out, changing the password, the session expiring or being
deleted closes that session's sockets within 2 s, on every process (4001
`signed_out`), and leaves other credentials' sockets open.

Real daphne processes, real sockets with the session cookie, the test
database's session rows; logout goes through the site's own logout view."""

import asyncio
from datetime import timedelta

import httpx
import pytest
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from django.utils import timezone

from .clients import close_code, outcome, recv_json
from .conftest import ORIGIN

pytestmark = pytest.mark.django_db(transaction=True)


def _daphne(processes):
    # Sessions are signed with SECRET_KEY: the server must read the ones this test writes.
    return processes.daphne(SECRET_KEY=settings.SECRET_KEY)


def _sign_in(user):
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def _dashboard(server, key):
    ws = await websockets.connect(
        server.ws_url + "/ws/market",
        additional_headers={"Cookie": f"sessionid={key}", "Origin": ORIGIN},
        open_timeout=10,
    )
    assert (await recv_json(ws))["type"] == "welcome"
    return ws


async def _closed_signed_out_within_two_seconds(started, *sockets):
    for ws in sockets:
        code, frames = await close_code(ws, timeout=5)
        assert code == 4001 and frames[-1]["code"] == "signed_out", (code, frames[-1:])
    took = asyncio.get_running_loop().time() - started
    assert took < 2, f"closed {took:.2f} s after the change"


async def _still_open(ws):
    await ws.send('{"type":"ping"}')
    while (await recv_json(ws))["type"] != "pong":
        pass


async def _log_out_over_http(server, key):
    async with httpx.AsyncClient(base_url=server.http_url, cookies={"sessionid": key}) as http:
        await http.get("/accounts/login/")  # the CSRF cookie
        csrf = http.cookies["csrftoken"]
        response = await http.post(
            "/accounts/logout/",
            data={"csrfmiddlewaretoken": csrf},
            headers={"Referer": server.http_url + "/", "Origin": server.http_url},
        )
        assert response.status_code in (200, 302), response.text[:300]


async def test_logging_out_closes_the_sessions_sockets_on_both_processes_within_two_seconds(processes, owner):
    first, second = _daphne(processes), _daphne(processes)
    key = await sync_to_async(_sign_in)(owner)
    other_key = await sync_to_async(_sign_in)(owner)  # the same user in another browser
    on_first, on_second = await _dashboard(first, key), await _dashboard(second, key)
    other = await _dashboard(second, other_key)
    started = asyncio.get_running_loop().time()
    await _log_out_over_http(first, key)
    await _closed_signed_out_within_two_seconds(started, on_first, on_second)
    await _still_open(other)
    await other.close()
    assert not await sync_to_async(Session.objects.filter(session_key=key).exists)()


async def test_changing_the_password_closes_every_session_of_the_user_but_not_their_tokens(
    processes, owner, owner_token
):
    server = _daphne(processes)
    sockets = [await _dashboard(server, await sync_to_async(_sign_in)(owner)) for _ in range(2)]
    result, token_socket = await outcome(server.ws_url, owner_token[1])
    assert result == "open"

    def change_password():
        with transaction.atomic():
            owner.set_password("a new password, long enough 0123")
            owner.save()

    started = asyncio.get_running_loop().time()
    await sync_to_async(change_password)()
    await _closed_signed_out_within_two_seconds(started, *sockets)
    await _still_open(token_socket)
    await token_socket.close()


async def test_deleting_the_session_closes_its_sockets_within_two_seconds(processes, owner):
    server = _daphne(processes)
    key = await sync_to_async(_sign_in)(owner)
    ws = await _dashboard(server, key)
    started = asyncio.get_running_loop().time()
    await sync_to_async(Session.objects.filter(session_key=key).delete)()
    await _closed_signed_out_within_two_seconds(started, ws)


async def test_clearsessions_closes_the_sockets_of_the_sessions_it_removes(processes, owner):
    server = _daphne(processes)
    key, kept_key = await sync_to_async(_sign_in)(owner), await sync_to_async(_sign_in)(owner)
    ws, kept = await _dashboard(server, key), await _dashboard(server, kept_key)
    # Expired behind the server's back (a plain UPDATE): only clearsessions tells it.
    past = timezone.now() - timedelta(minutes=1)
    await sync_to_async(Session.objects.filter(session_key=key).update)(expire_date=past)
    started = asyncio.get_running_loop().time()
    await sync_to_async(call_command)("clearsessions")
    await _closed_signed_out_within_two_seconds(started, ws)
    await _still_open(kept)
    await kept.close()


async def test_a_session_expiring_closes_its_sockets_at_its_expiry(processes, owner):
    server = _daphne(processes)
    key = await sync_to_async(_sign_in)(owner)
    expires = timezone.now() + timedelta(seconds=3)
    await sync_to_async(Session.objects.filter(session_key=key).update)(expire_date=expires)
    ws = await _dashboard(server, key)
    code, frames = await close_code(ws, timeout=8)
    late = (timezone.now() - expires).total_seconds()
    assert code == 4001 and frames[-1]["code"] == "signed_out"
    assert 0 <= late < 2, f"closed {late:.2f} s after the session's expiry"
