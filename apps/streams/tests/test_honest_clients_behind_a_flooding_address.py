"""2,000 forged tokens from one address use up its failed sign-in budget;
four clients behind that same address, with real tokens no process has
checked yet, still connect at once on two daphne processes: a token whose
lookup prefix is known to be real is always checked. What is still refused
for the budget gets 4101 with `retry_after` (sockets) or 429 with
Retry-After (REST). Also when Redis lost the set of known prefixes: the
first unknown prefix has one process rebuild it from the database.
Real daphnes, Redis and PostgreSQL."""

import asyncio
import json
import time

import httpx
import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from websockets.exceptions import ConnectionClosed

from apps.accounts import tokens
from apps.accounts.models import ApiToken
from stocktracker.lib import keys

from .clients import close_code, connect, recv_json

pytestmark = pytest.mark.django_db(transaction=True)

FORGED = 2000
CONCURRENCY = 50
HONEST = 4


def _redis():
    return redis.Redis.from_url(settings.REDIS_URL)


async def _first(url, raw):
    """("welcome", None) or (close code, the error frame)."""
    try:
        async with connect(url, raw) as ws:
            first = await recv_json(ws, 10)
            if first["type"] == "welcome":
                return "welcome", None
            code, _ = await close_code(ws, 10)
            return code, first
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), None


@pytest.mark.parametrize("known_set", ["kept", "lost"])
async def test_four_honest_clients_connect_after_two_thousand_forged_tokens_from_their_address(
    processes, owner, known_set
):
    issued = await sync_to_async(lambda: [ApiToken.issue(owner, label=f"desk {n}")[1] for n in range(HONEST)])()
    client = _redis()
    if known_set == "kept":
        # As after an earlier rebuild: the set is complete, so only the issue itself told it.
        client.set(keys.generation(keys.known_complete(keys.KNOWN_TOKENS)), "rebuilt", ex=3600)
    else:
        client.delete(keys.known(keys.KNOWN_TOKENS))  # Redis lost it (and was never rebuilt)
    client.close()
    webs = [processes.daphne(), processes.daphne()]  # every limit at its default
    codes = {}

    async def forged(i, http):
        web = webs[i % 2]
        if i % 4 == 3:
            response = await http.get(
                f"{web.http_url}/api/v1/snapshot/market", headers={"Authorization": f"Bearer {tokens.generate()}"}
            )
            code = f"http {response.status_code}"
        else:
            code, _ = await _first(f"{web.ws_url}/ws/market", tokens.generate())
        codes[code] = codes.get(code, 0) + 1

    async with httpx.AsyncClient(timeout=10) as http:
        started = time.monotonic()
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i):
            async with gate:
                await forged(i, http)

        await asyncio.gather(*(one(i) for i in range(FORGED)))
        took = time.monotonic() - started
        honest = await asyncio.gather(*(_first(f"{webs[n % 2].ws_url}/ws/market", raw) for n, raw in enumerate(issued)))
        late_socket = await _first(f"{webs[0].ws_url}/ws/market", tokens.generate())
        late_rest = await http.get(
            f"{webs[1].http_url}/api/v1/snapshot/market", headers={"Authorization": f"Bearer {tokens.generate()}"}
        )
    print(
        json.dumps(
            {"known set": known_set, "forged": FORGED, "seconds": round(took, 1), "answers": codes, "honest": honest}
        )
    )
    assert set(codes) <= {4001, 4101, "http 401", "http 429"}, codes
    assert codes.get(4101, 0) + codes.get("http 429", 0) >= FORGED - 2 * settings.WS_AUTH_FAILURES_PER_MINUTE
    assert [code for code, _ in honest] == ["welcome"] * HONEST, honest
    code, frame = late_socket
    assert (code, frame["code"]) == (4101, "too_many_failures"), late_socket
    assert 1 <= frame["retry_after"] <= 60, frame
    assert late_rest.status_code == 429 and 1 <= int(late_rest.headers["Retry-After"]) <= 60
