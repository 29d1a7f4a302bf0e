"""Control messages reach sockets through one subscription per group per
process: however many sockets a token has on a daphne process, Redis sees
one subscriber of the token's group and no channel per socket; the
subscription goes when the last local socket closes; a staff kick reaches
exactly the socket it names."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from apps.streams import admin
from stocktracker.lib import keys
from stocktracker.lib import redis as redis_lib
from stocktracker.lib.state import get_state

from .clients import connect, recv_json
from .conftest import closed_with, communicator, frame

pytestmark = pytest.mark.django_db(transaction=True)


def _layer_name(group):
    return f"stk__group__{group}"  # channels_redis' name for a group (prefix "stk")


async def _subscribers(client, group):
    return dict(await client.pubsub_numsub(_layer_name(group)))[_layer_name(group).encode()]


def _raise_caps(owner, issue):
    from apps.accounts.models import UserLimits

    limits = UserLimits.for_user(owner)
    limits.max_connections = 50
    limits.save()
    return issue(max_connections=50)


async def test_one_subscription_per_group_per_process_and_none_per_socket(processes, owner, issue):
    token, raw = await sync_to_async(_raise_caps)(owner, issue)
    server = processes.daphne(WS_MAX_CONNECTIONS_PER_IP=50)
    client = redis_lib.async_client(decode_responses=False)
    try:
        first = await connect(server.ws_url + "/ws/market", raw)
        assert (await recv_json(first))["type"] == "welcome"
        channels_with_one = len(await client.pubsub_channels("stk*"))
        socks = [await connect(server.ws_url + "/ws/market", raw) for _ in range(20)]
        for ws in socks:
            assert (await recv_json(ws))["type"] == "welcome"
        assert len(await client.pubsub_channels("stk*")) == channels_with_one  # nothing per socket
        assert await _subscribers(client, keys.token_group(token.id)) == 1
        assert await _subscribers(client, keys.user_group(owner.pk)) == 1
        for ws in [first, *socks]:
            await ws.close()
        await asyncio.sleep(1)
        assert await _subscribers(client, keys.token_group(token.id)) == 0
        assert await _subscribers(client, keys.user_group(owner.pk)) == 0
    finally:
        await client.aclose()


async def test_a_kick_closes_the_socket_it_names_and_not_its_neighbour(owner_token):
    _, raw = owner_token
    kept, kicked = communicator(token=raw), communicator(token=raw)
    for comm in (kept, kicked):
        await comm.connect()
        assert (await frame(comm))["type"] == "welcome"
    entries = sorted(await get_state().entries(), key=lambda info: info["id"])
    assert len({info["channel"] for info in entries}) == 1  # one address: the process
    assert await admin._disconnect({entries[1]["id"]}, "staff") == 1
    code, frames = await closed_with(kicked)
    assert code == 4009 and frames[-1]["code"] == "disconnected"
    await kept.send_to(text_data='{"type":"ping"}')
    assert (await frame(kept))["type"] == "pong"
    await kept.disconnect()
