"""docs/asyncapi.yaml is exact: real frames from real sockets validate against
its schemas (types, required fields, no undocumented field), its examples are
real frames, and every description survives a parser (none beside a `$ref`)."""

import asyncio
import json

import pytest
import websockets

from apps.accounts.models import ApiToken
from apps.streams.protocol import STREAMS
from apps.streams.publish import publish_feed_state

from .asyncapi import DOC, errors, example_payloads, validator

WORKER_ENV = {"FEED_SOURCE": "simulator", "SIMULATOR_CLOCK": "demo", "SIMULATOR_SPEED": "60", "FEED_INTERVAL": "0.5"}


def test_no_field_description_sits_beside_a_ref():
    # Beside `$ref`, JSON Schema draft 07 (and the AsyncAPI parser) ignores every other keyword.
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            if "$ref" in node and len(node) > 1:
                found.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(DOC, "")
    assert found == []


EXAMPLES = list(example_payloads())


@pytest.mark.parametrize("name, pointer, payload", EXAMPLES, ids=[name for name, _, _ in EXAMPLES])
def test_every_example_is_a_valid_frame(name, pointer, payload):
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(pointer).iter_errors(payload)]
    # After a payload change, refresh the examples: .venv/bin/python scripts/capture_frames.py
    assert problems == [], f"{name}: the example no longer matches the schema (re-run scripts/capture_frames.py)"


def test_each_snapshot_message_has_a_real_simulator_frame_as_example():
    examples = {name: payload for name, _, payload in example_payloads()}
    for stream in STREAMS:
        frame = examples[f"{stream}Snapshot"]
        assert frame["type"] == "snapshot" and frame["stream"] == stream
        assert frame["simulated"] is True and frame["seq"] >= 1


def test_the_points_tuple_is_checked_item_by_item():
    good = json.loads(json.dumps(next(p for n, _, p in example_payloads() if n == "indexSnapshot")))
    check = validator("/components/messages/indexSnapshot/payload")
    assert list(check.iter_errors(good)) == []
    for bad in ([1796176800000, "1914.16"], [1796176800000.5, 1914.16], [1796176800000], [1, 2.0, 3.0]):
        frame = json.loads(json.dumps(good))
        frame["data"]["indices"][0]["points"] = [bad]
        assert list(check.iter_errors(frame)), bad


async def collect(url, token, want):
    """Frames from one socket until every type in `want` has arrived."""
    seen = []
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        while not want <= {frame["type"] for frame in seen}:
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
            if seen[-1]["type"] == "snapshot" and len([f for f in seen if f["type"] == "snapshot"]) == 1:
                # The feed state changes once every stream is live: a real `feed` frame follows.
                await publish_feed_state("stale", detail="SSI DailyIndex: timed out", simulated=True)
    return seen


async def refused(url):
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer stk_wrong"}) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return frame


@pytest.mark.e2e
def test_real_frames_over_real_sockets_match_the_document(processes, owner):
    _, raw = ApiToken.issue(owner, label="asyncapi")
    web = processes.daphne(WS_HEARTBEAT_INTERVAL="1")
    processes.worker(**WORKER_ENV)
    want = {"welcome", "snapshot", "feed", "heartbeat", "pong"}

    async def main():
        streams = await asyncio.gather(*(collect(f"{web.ws_url}/ws/{s}", raw, want) for s in STREAMS))
        return streams, await refused(f"{web.ws_url}/ws/market")

    streams, error = asyncio.run(main())
    for stream, frames in zip(STREAMS, streams, strict=True):
        assert want <= {frame["type"] for frame in frames}
        for frame in frames:
            assert errors(frame, stream) == [], f"{stream} {frame['type']}: {json.dumps(frame)[:300]}"
    assert error["type"] == "error" and errors(error, "market") == []
