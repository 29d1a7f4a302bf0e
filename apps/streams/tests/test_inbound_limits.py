"""Inbound limits: oversized or flooding input closes 4008; bad or unknown
messages get an `error` frame and the socket stays open."""

import json

import pytest

from .conftest import closed_with, communicator, frame, publish

pytestmark = pytest.mark.django_db(transaction=True)


async def _open(owner_token):
    comm = communicator(token=owner_token[1])
    await comm.connect()
    assert (await frame(comm))["type"] == "welcome"
    return comm


async def test_it_closes_4008_on_a_message_over_the_inbound_limit(owner_token, settings):
    comm = await _open(owner_token)
    await comm.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * settings.WS_MAX_INBOUND_BYTES}))
    code, frames = await closed_with(comm)
    assert code == 4008 and frames[-1]["code"] == "too_large"


async def test_it_closes_4008_when_the_client_floods(owner_token, settings):
    settings.WS_INBOUND_RATE, settings.WS_INBOUND_BURST = 5, 10
    comm = await _open(owner_token)
    for _ in range(30):
        await comm.send_to(text_data='{"type":"pong","nonce":"x"}')
    code, frames = await closed_with(comm)
    assert code == 4008 and frames[-1]["code"] == "flooding"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ('{"type":"subscribe"}', "unknown_type"),
        ("not json", "bad_message"),
        ("[1,2]", "unknown_type"),
        ('{"type":"auth","token":"stk_x"}', "already_authenticated"),
    ],
)
async def test_it_answers_bad_messages_with_an_error_frame_and_stays_open(owner_token, message, error):
    comm = await _open(owner_token)
    await comm.send_to(text_data=message)
    assert (await frame(comm)) == {"type": "error", "code": error, "message": (await _message_for(error))}
    await comm.send_to(text_data='{"type":"ping"}')
    assert (await frame(comm))["type"] == "pong"
    await comm.disconnect()


async def _message_for(error):
    return {
        "unknown_type": "unknown message type",
        "bad_message": "not JSON",
        "already_authenticated": "this socket is already authenticated",
    }[error]


async def test_it_answers_binary_frames_with_an_error(owner_token):
    comm = await _open(owner_token)
    await comm.send_to(bytes_data=b"\x00\xff")
    assert (await frame(comm))["code"] == "bad_message"
    await comm.disconnect()


async def test_resync_sends_the_latest_snapshot_again(owner_token):
    await publish(data={"n": 7})
    comm = await _open(owner_token)
    assert (await frame(comm))["data"] == {"n": 7}
    await comm.send_json_to({"type": "resync"})
    again = await frame(comm)
    assert again["type"] == "snapshot" and again["data"] == {"n": 7}
    await comm.disconnect()
