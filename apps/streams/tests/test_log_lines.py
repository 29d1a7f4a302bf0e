"""One line per connect and disconnect, refusals at WARNING with the reason,
and LOG_FORMAT=json gives one JSON object per line with those fields."""

import asyncio
import json
import re

import pytest
from asgiref.sync import sync_to_async

from .clients import close_code, connect, recv_json

pytestmark = pytest.mark.django_db(transaction=True)

ACCESS_LOG = re.compile(r"^\S+:\d+ - - \[[^\]]+\] \"")


async def test_a_real_daphne_logs_connects_disconnects_and_refusals_as_json_lines(processes, owner, issue):
    token, raw = await sync_to_async(issue)(max_connections=1, streams=["market"])
    server = await sync_to_async(processes.daphne)(LOG_FORMAT="json")
    async with connect(server.ws_url + "/ws/market", raw) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        async with connect(server.ws_url + "/ws/market", raw) as second:
            assert (await close_code(second))[0] == 4100
        async with connect(server.ws_url + "/ws/index", raw) as forbidden:
            assert (await close_code(forbidden))[0] == 4003
        await asyncio.sleep(0.3)
    async with connect(server.ws_url + "/ws/market", "stk_not_a_real_token") as bad:
        assert (await close_code(bad))[0] == 4001
    await asyncio.sleep(0.3)
    await sync_to_async(processes.stop)(server)
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    # Daphne's access log bypasses `logging` (it writes to stdout itself); every other line is JSON.
    records = [json.loads(line) for line in lines if not ACCESS_LOG.match(line)]
    ours = [r for r in records if r["logger"] == "apps.streams"]
    connects = [r for r in ours if r["message"].startswith("connect ")]
    disconnects = [r for r in ours if r["message"].startswith("disconnect ")]
    refused = [r for r in ours if r["message"].startswith("refused ")]
    assert len(connects) == 1 and len(disconnects) == 1
    assert connects[0]["level"] == "INFO"
    assert {k: connects[0][k] for k in ("stream", "user", "token_prefix", "ip")} == {
        "stream": "market",
        "user": "owner",
        "token_prefix": token.prefix,
        "ip": "127.0.0.1",
    }
    assert disconnects[0]["code"] == 1000 and disconnects[0]["duration_s"] >= 0.3
    assert disconnects[0]["token_prefix"] == token.prefix and disconnects[0]["sent"] >= 0
    reasons = {(r["code"], r["reason"], r["token_prefix"]) for r in refused}
    assert reasons == {
        (4100, "over_limit", token.prefix),
        (4003, "stream_forbidden", token.prefix),
        (4001, "auth_failed", "-"),
    }
    assert all(r["level"] == "WARNING" for r in refused)
