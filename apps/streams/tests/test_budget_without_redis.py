"""While Redis is down the failed sign-in budget is kept per process: the
REST snapshot (which no watchdog gates) answers forged tokens 401 up to the
budget, then 429 with Retry-After and no database lookup, and a token the
process knows is still checked (its answer is 503: the snapshot lives in
Redis). Real daphne, its own redis-server (killed), PostgreSQL."""

import time

import httpx
import pytest
from asgiref.sync import sync_to_async

from apps.accounts import tokens
from apps.accounts.models import ApiToken

from .test_forged_token_flood import _token_table_scans

pytestmark = pytest.mark.django_db(transaction=True)

BUDGET = 5
FORGED = 40


async def test_with_redis_down_forged_bearer_tokens_get_429_past_a_per_process_budget(processes, owner, own_redis):
    _, raw = await sync_to_async(ApiToken.issue)(owner, label="real")
    web = processes.daphne(REDIS_URL=own_redis.url, WS_AUTH_FAILURES_PER_MINUTE=BUDGET)
    url = f"{web.http_url}/api/v1/snapshot/market"

    def bearer(token):
        return {"Authorization": f"Bearer {token}"}

    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(url, headers=bearer(raw))).status_code in (200, 503)  # the process loads it
        own_redis.kill()
        time.sleep(1.5)  # PostgreSQL publishes a backend's counters when it ends or within a second
        before = await sync_to_async(_token_table_scans)()
        answers = [await http.get(url, headers=bearer(tokens.generate())) for _ in range(FORGED)]
        real = await http.get(url, headers=bearer(raw))
        time.sleep(1.5)
        lookups = await sync_to_async(_token_table_scans)() - before
    statuses = [response.status_code for response in answers]
    print(f"\nredis down, budget {BUDGET}: forged {statuses.count(401)} x 401, {statuses.count(429)} x 429; "
          f"token-table lookups {lookups}; a known token: {real.status_code} {real.json()['code']}")  # fmt: skip
    assert statuses == [401] * BUDGET + [429] * (FORGED - BUDGET), statuses
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert lookups <= BUDGET + 2, f"{lookups} token lookups for {FORGED} forged tokens"
    assert (real.status_code, real.json()["code"]) == (503, "unavailable"), real.text
