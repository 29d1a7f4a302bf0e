"""Sockets that have not signed in yet are capped per process: past the cap a
new socket is refused at once with 1013 (one log line per interval, not one
per socket), the idle ones are closed at WS_AUTH_TIMEOUT, and then the process
takes new sockets again. Signed-in sockets do not count and keep streaming."""

import asyncio
import time

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings

from apps.accounts.models import ApiToken

from .clients import close_code, connect, recv_json
from .conftest import publish, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

CAP = 20
AUTH_TIMEOUT = 3.0


async def test_past_the_cap_of_sockets_not_signed_in_new_ones_get_1013_at_once_until_the_idle_ones_time_out(
    processes, owner_token
):
    await sync_to_async(ApiToken.objects.filter(pk=owner_token[0].pk).update)(max_connections=50)
    server = processes.daphne(
        WS_MAX_UNAUTHENTICATED_PER_PROCESS=CAP,
        WS_MAX_UNAUTHENTICATED_PER_IP=100,
        WS_AUTH_TIMEOUT=AUTH_TIMEOUT,
        WS_MAX_CONNECTIONS_PER_IP=100,
    )
    url = server.ws_url + "/ws/market"
    signed_in = await connect(url, owner_token[1]).__aenter__()
    assert (await recv_json(signed_in))["type"] == "welcome"  # counts as signed in, not against the cap
    idle = []
    try:
        opened = time.monotonic()
        idle = [await connect(url).__aenter__() for _ in range(CAP)]  # no credentials, no `auth` message
        refusals = []
        for i in range(30):
            started = time.monotonic()
            # Past the cap even a good token is turned away before any check: it is a socket like the others.
            async with connect(url, owner_token[1] if i % 2 else None) as extra:
                try:
                    code, frames = await close_code(extra, timeout=1.5)
                except TimeoutError:
                    code, frames = "still open", []
            refusals.append((code, frames[-1]["code"] if frames else None, time.monotonic() - started))
        assert all(code == 1013 and error == "overloaded" for code, error, _ in refusals), refusals
        slowest = max(took for *_, took in refusals)
        assert slowest < 1.0, f"a refusal past the cap took {slowest:.2f} s"

        closes = await asyncio.gather(*(close_code(ws, timeout=AUTH_TIMEOUT + 3) for ws in idle))
        idle_for = time.monotonic() - opened
        assert [(code, frames[-1]["code"]) for code, frames in closes] == [(4001, "auth_timeout")] * CAP
        assert idle_for < AUTH_TIMEOUT + 2, f"idle sockets closed after {idle_for:.1f} s"

        async with connect(url, owner_token[1]) as again:
            assert (await recv_json(again))["type"] == "welcome", "the process takes sockets again"
        await publish(data={"still": "streaming"})
        while (frame := await recv_json(signed_in, 3))["type"] != "snapshot" or frame["data"] != {"still": "streaming"}:
            pass
    finally:
        for ws in [signed_in, *idle]:
            await ws.close()
    log = server.log_path.read_text()
    assert log.count("refusing new sockets with 1013") == 1, log  # 30 refusals, one line
    assert "not signed in yet (WS_MAX_UNAUTHENTICATED_PER_PROCESS)" in log
    print(f"\nunauthenticated cap {CAP}: 30 refused 1013, slowest {slowest:.3f} s; idle 4001 at {idle_for:.1f} s")


async def test_one_address_holds_at_most_the_per_ip_cap_of_sockets_not_signed_in(processes, owner):
    cookie = (await session_cookie(owner))[1].decode()
    per_ip = 5
    server = processes.daphne(
        WS_MAX_UNAUTHENTICATED_PER_IP=per_ip,
        WS_AUTH_TIMEOUT=AUTH_TIMEOUT,
        WS_TRUSTED_PROXIES="127.0.0.1",
        SECRET_KEY=settings.SECRET_KEY,
    )
    url = server.ws_url + "/ws/market"
    idle = []
    try:
        idle = [await connect(url).__aenter__() for _ in range(per_ip)]  # silent: no credentials
        started = time.monotonic()
        async with connect(url) as extra:
            try:
                code, frames = await close_code(extra, timeout=1.5)
            except TimeoutError:
                code, frames = "still open", [{"code": None}]
        took = time.monotonic() - started
        assert (code, frames[-1]["code"]) == (4100, "over_limit"), (code, frames)
        assert took < 1.0
        # Another address behind the trusted proxy is not held up by this one.
        other = await websockets.connect(url, additional_headers={"X-Forwarded-For": "10.1.1.1"}, open_timeout=5)
        idle.append(other)
        with pytest.raises(TimeoutError):
            await close_code(other, timeout=0.5)  # accepted, waiting for its `auth` message
        # A session cookie is signing in like any other socket until its check is done: held up too.
        headers = {"Cookie": cookie, "Origin": server.http_url}
        async with websockets.connect(url, additional_headers=headers, open_timeout=5) as dashboard:
            code, frames = await close_code(dashboard, timeout=1.5)
        assert (code, frames[-1]["code"]) == (4100, "over_limit"), (code, frames)
        headers["X-Forwarded-For"] = "10.1.1.2"  # the same session from elsewhere
        async with websockets.connect(url, additional_headers=headers, open_timeout=5) as dashboard:
            assert (await recv_json(dashboard))["type"] == "welcome"
    finally:
        for ws in idle:
            await ws.close()
    print(f"\nper-IP cap of sockets not signed in ({per_ip}): the next one refused 4100 in {took:.3f} s")
