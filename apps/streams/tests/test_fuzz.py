"""10,000 random malformed frames leave the server up and other clients unaffected."""

import asyncio
import json
import random

import pytest
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed

from apps.accounts.models import ApiToken

from .clients import connect, recv_json
from .conftest import publish

pytestmark = pytest.mark.django_db(transaction=True)

FRAMES = 10_000


def malformed(rnd):
    kind = rnd.randrange(9)
    if kind == 0:
        return bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200)))
    if kind == 1:
        return "".join(chr(rnd.randrange(1, 0x10FFFF)) for _ in range(rnd.randrange(1, 100))).encode("utf-8", "replace")
    if kind == 2:
        return "[" * rnd.randrange(1, 2000)
    if kind == 3:
        return json.dumps({"type": rnd.choice([None, 5, [], {}, "", "x" * 50, "auth", "resync", "pong"])})
    if kind == 4:
        return json.dumps({"type": "auth", "token": rnd.choice([[], {}, 3, None, "stk_" + "a" * 38, "\u0000"])})
    if kind == 5:
        return '{"type":"ping"' + "}" * rnd.randrange(0, 3)
    if kind == 6:
        return str(rnd.randrange(10 ** rnd.randrange(1, 400))) + rnd.choice(["", "e999", ".5e-999"])
    if kind == 7:
        return json.dumps([rnd.random() for _ in range(rnd.randrange(50))])
    return '"' + "\\u" + "".join(rnd.choice("0123456789abcdefXYZ") for _ in range(4)) + '"'


async def test_ten_thousand_malformed_frames_leave_the_server_up_and_others_streaming(processes, owner_token):
    raw = owner_token[1]
    await sync_to_async(ApiToken.objects.filter(pk=owner_token[0].pk).update)(max_connections=50)
    server = processes.daphne(WS_INBOUND_RATE=1_000_000, WS_INBOUND_BURST=1_000_000, WS_MAX_CONNECTIONS_PER_IP=100)
    rnd = random.Random(20261127)
    async with connect(server.ws_url + "/ws/market", raw) as watcher:
        assert (await recv_json(watcher))["type"] == "welcome"
        seen = []

        async def watch():  # the other client keeps reading (and answering pings) throughout
            while len(seen) < FRAMES // 100:
                message = await recv_json(watcher, 60)
                if message["type"] == "snapshot":
                    seen.append(message["data"]["sent"])

        watching = asyncio.ensure_future(watch())
        sent = errors = 0
        while sent < FRAMES:
            async with connect(server.ws_url + "/ws/market", raw) as fuzzer:
                try:
                    for _ in range(2000):
                        frame = malformed(rnd)
                        await fuzzer.send(frame)
                        sent += 1
                        if sent % 100 == 0:
                            await publish(data={"sent": sent})
                    await fuzzer.send('{"type":"ping"}')
                    while (await recv_json(fuzzer, 30))["type"] != "pong":  # after 2,000 error frames
                        errors += 1
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None and exc.rcvd.code in (4001, 4008), exc
        try:
            await asyncio.wait_for(watching, 30)
        except TimeoutError:
            missing = sorted(set(range(100, FRAMES + 1, 100)) - set(seen))
            pytest.fail(f"the other client got {len(seen)} of {FRAMES // 100} snapshots; missing {missing[:10]}")
        assert seen == list(range(100, FRAMES + 1, 100))
        await asyncio.sleep(0.2)
    assert server.poll() is None
    log = server.log_path.read_text()
    assert "Exception inside application" not in log and "Traceback" not in log
