"""A reconnect storm of one real token the processes have not cached yet never
uses up its address's failed sign-in budget: concurrent checks of one token
share one reservation and one database check. Real daphnes, Redis, PostgreSQL."""

import asyncio
from collections import Counter

import pytest
from asgiref.sync import sync_to_async

from apps.accounts.models import ApiToken, UserLimits

from .clients import outcome

pytestmark = pytest.mark.django_db(transaction=True)

STORM = 100
BUDGET = 5


def _raise_user_cap(user, cap=1000):
    limits = UserLimits.for_user(user)
    limits.max_connections = cap
    limits.save()


async def test_a_hundred_concurrent_first_connects_of_one_real_token_are_never_refused_as_failures(processes, owner):
    await sync_to_async(_raise_user_cap)(owner)
    _, raw = await sync_to_async(ApiToken.issue)(owner, label="storm", max_connections=STORM)
    env = {"WS_AUTH_FAILURES_PER_MINUTE": BUDGET, "WS_MAX_CONNECTIONS_PER_IP": 1000}
    servers = [processes.daphne(**env) for _ in range(2)]
    results = await asyncio.gather(*(outcome(servers[i % 2].ws_url, raw) for i in range(STORM)))
    try:
        codes = Counter(result for result, _ in results)
        print(f"\n{STORM} concurrent first connects of one real token, budget {BUDGET}: {dict(codes)}")
        assert codes == {"open": STORM}, codes
    finally:
        await asyncio.gather(*(ws.close() for _, ws in results if ws is not None))
