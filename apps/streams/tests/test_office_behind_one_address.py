"""Twenty staff behind one office address each keep the dashboard open: session
sockets count against their user's cap and their session's, not the address's;
token sockets from that address are still capped per IP. Real daphne, Redis
and PostgreSQL, WS_MAX_CONNECTIONS_PER_IP at its default."""

import asyncio
import time

import pytest
import websockets
from django.conf import settings
from django.test import Client

from apps.accounts.models import ApiToken
from apps.streams.protocol import STREAMS

from .clients import close_code, recv_json

pytestmark = pytest.mark.e2e

STAFF = 20
TAB_GAP = 0.05  # seconds between two analysts opening their dashboard


def login(user):
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def open_socket(url, origin, cookie=None, token=None):
    """(socket, None) once `welcome` came, or (None, (close code, error frame))."""
    headers = {"Origin": origin}
    if cookie:
        headers["Cookie"] = f"sessionid={cookie}"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    ws = await websockets.connect(url, additional_headers=headers, open_timeout=10)
    first = await recv_json(ws, 10)
    if first["type"] == "welcome":
        return ws, None
    code, _ = await close_code(ws, 5)
    return None, (code, first)


def test_twenty_staff_behind_one_address_each_keep_the_dashboard_open(processes, django_user_model, owner):
    assert settings.WS_MAX_CONNECTIONS_PER_IP == 5, "the default per-IP cap"
    staff = [django_user_model.objects.create_user(f"analyst{i}", f"a{i}@example.com", "pw") for i in range(STAFF)]
    cookies = [login(user) for user in staff]
    second_session = login(staff[0])
    _, raw = ApiToken.issue(owner, label="office bot", max_connections=20)
    # Per-IP cap at its default; the test's key, so the sessions it logged in verify there.
    web = processes.daphne(SECRET_KEY=settings.SECRET_KEY)
    origin = web.http_url  # the dashboard page's own origin

    def url(stream):
        return f"{web.ws_url}/ws/{stream}"

    async def main():
        sockets = []
        try:
            # Every analyst's dashboard tab opens one socket per stream at once, a tab every
            # TAB_GAP seconds. (Sixty sockets in the same instant would exceed
            # WS_MAX_UNAUTHENTICATED_PER_IP while their sessions are checked: a cookie is
            # signing in like a token until then, and gets 4100 and a retry.)
            started = time.monotonic()

            async def tab(i, cookie):
                await asyncio.sleep(i * TAB_GAP)
                return await asyncio.gather(*(open_socket(url(stream), origin, cookie) for stream in STREAMS))

            tabs = [ws for opened in await asyncio.gather(*(tab(i, c) for i, c in enumerate(cookies))) for ws in opened]
            took = time.monotonic() - started
            sockets += [ws for ws, _ in tabs if ws]
            refused = [why for _, why in tabs if why]
            assert not refused, f"dashboard sockets refused behind one address: {refused[:3]}"
            # One analyst opens more tabs in the same session: up to WS_MAX_CONNECTIONS_PER_SESSION.
            more = []
            for _ in range(settings.WS_MAX_CONNECTIONS_PER_SESSION - len(STREAMS) + 1):
                ws, why = await open_socket(url("market"), origin, cookies[0])
                sockets += [ws] if ws else []
                more.append(why)
            # Another session of the same analyst: up to the user's cap.
            other = []
            for _ in range(settings.USER_DEFAULT_MAX_CONNECTIONS - settings.WS_MAX_CONNECTIONS_PER_SESSION + 1):
                ws, why = await open_socket(url("market"), origin, second_session)
                sockets += [ws] if ws else []
                other.append(why)
            # API tokens from the same address are still capped per IP.
            bots = []
            for _ in range(settings.WS_MAX_CONNECTIONS_PER_IP + 1):
                ws, why = await open_socket(url("market"), origin, token=raw)
                sockets += [ws] if ws else []
                bots.append(why)
            return took, refused, more, other, bots, len(sockets)
        finally:
            for ws in sockets:
                await ws.close()

    took, refused, more, other, bots, opened = asyncio.run(main())
    print(f"\n{STAFF} staff x {len(STREAMS)} sockets from one address: {STAFF * len(STREAMS) - len(refused)} open "
          f"in {took:.2f} s, refused {refused}")  # fmt: skip

    def over(why, what):
        code, frame = why
        return code == 4100 and frame["code"] == "over_limit" and frame["message"].endswith(f"for this {what}")

    assert more[:-1] == [None] * (len(more) - 1) and over(more[-1], "session"), more
    assert other[:-1] == [None] * (len(other) - 1) and over(other[-1], "user"), other
    assert bots[:-1] == [None] * (len(bots) - 1) and over(bots[-1], "ip"), bots
    assert opened == STAFF * len(STREAMS) + len(more) - 1 + len(other) - 1 + len(bots) - 1
