"""The REST snapshot's bearer checks share the sockets' failed sign-in budget:
past it, forged tokens get 429 with Retry-After before any database work, on
the REST endpoint and on the sockets alike, and a token the process knows
still gets its snapshot. Real daphne, Redis and PostgreSQL; the lookups are
counted by PostgreSQL (`pg_stat_user_tables`)."""

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest

from apps.accounts import tokens
from apps.accounts.models import ApiToken
from apps.streams.tests.clients import close_code, connect
from apps.streams.tests.test_forged_token_flood import _token_table_scans

from . import samples

pytestmark = pytest.mark.e2e

BUDGET = 5
FORGED = 40


def get(url, raw):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {raw}"})  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_forged_bearer_tokens_on_the_snapshot_api_use_up_the_budget_and_then_get_429_without_a_query(processes, owner):
    _, raw = ApiToken.issue(owner, label="real")
    samples.publish_all()
    web = processes.daphne(WS_AUTH_FAILURES_PER_MINUTE=str(BUDGET))
    url = f"{web.http_url}/api/v1/snapshot/market"
    for _ in range(2):  # the first use creates the token's generation, the second caches it
        assert get(url, raw)[0] == 200
    time.sleep(1.5)  # PostgreSQL publishes a backend's counters when it ends or within a second
    before = _token_table_scans()
    answers = [get(url, tokens.generate()) for _ in range(FORGED)]
    real_status, _, frame = get(url, raw)
    # The same address is over budget on the sockets too: a forged token there gets 4101 unchecked.
    socket_code = asyncio.run(_socket_close(f"{web.ws_url}/ws/market", tokens.generate()))
    time.sleep(1.5)
    lookups = _token_table_scans() - before

    statuses = [status for status, _, _ in answers]
    print(f"\nREST forged {FORGED}, budget {BUDGET}: statuses {sorted(set(statuses))}, token-table lookups {lookups}")
    assert statuses[:BUDGET] == [401] * BUDGET, statuses
    assert statuses[BUDGET:] == [429] * (FORGED - BUDGET), statuses
    _, headers, body = answers[-1]
    assert body["code"] == "too_many_failures"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert lookups <= BUDGET + 1, f"{lookups} token lookups for {FORGED} forged tokens"
    assert real_status == 200 and frame["type"] == "snapshot", "a known token is still served"
    assert socket_code == 4101


async def _socket_close(url, raw):
    async with connect(url, raw) as ws:
        code, _ = await close_code(ws, 10)
    return code
