"""A change that missed its announcement (a queryset `.update()`: no signal,
no new generation) reaches every new check within TOKEN_CACHE_TTL, on the
sockets and on the REST snapshot alike, on a process that had the token
cached. Real daphne, Redis and PostgreSQL."""

import asyncio

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from apps.accounts.models import ApiToken

from .clients import close_code, connect, recv_json
from .conftest import publish

pytestmark = pytest.mark.django_db(transaction=True)

TTL = 2.0


async def _socket(url, raw):
    async with connect(url, raw) as ws:
        first = await recv_json(ws, 10)
        if first["type"] == "welcome":
            return "welcome", first
        code, _ = await close_code(ws, 10)
        return code, first


async def test_a_token_revoked_behind_accounts_back_is_refused_after_the_cache_ttl(processes, owner_token):
    token, raw = owner_token
    await publish()
    web = processes.daphne(TOKEN_CACHE_TTL=TTL)
    url = f"{web.ws_url}/ws/market"
    bearer = {"Authorization": f"Bearer {raw}"}
    async with httpx.AsyncClient(base_url=web.http_url, timeout=10) as http, connect(url, raw) as held:
        # The first use loads the token and creates its generation, then it is cached. A socket of
        # the token stays open, so a new one joins a control group the process already follows:
        # nothing but the cached copy's age can make its check read the database again.
        assert (await recv_json(held, 10))["type"] == "welcome"
        assert (await http.get("/api/v1/snapshot/market", headers=bearer)).status_code == 200
        # No signal, no new generation.
        await sync_to_async(ApiToken.objects.filter(pk=token.pk).update)(revoked_at=timezone.now())
        await asyncio.sleep(TTL + 1)
        response = await http.get("/api/v1/snapshot/market", headers=bearer)
        code, frame = await _socket(url, raw)
    print(f"\n.update() revoke, TOKEN_CACHE_TTL={TTL:g} s, checked {TTL + 1:g} s later: socket {code}, REST "
          f"{response.status_code}")  # fmt: skip
    assert (code, frame.get("code")) == (4004, "token_revoked"), frame
    assert response.status_code == 401 and response.json()["code"] == "token_revoked", response.text
