"""GET /api/v2/snapshot?topic=: a topic's complete snapshot, with the epoch
and seq to follow from, under the same sign-in checks and scopes as the
sockets; unknown topics get 404, a poll counts as a topic follower."""

import json

import pytest
from asgiref.sync import async_to_sync

from apps.streams.publish import publish_topic
from stocktracker.lib import keys
from stocktracker.lib.state import get_state

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v2/snapshot"
UNIVERSE = {"day": "2026-11-27", "instruments": [{"symbol": "FPT"}, {"symbol": "HPG"}], "indices": [{"code": "VN30"}]}


def bearer(raw):
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


@async_to_sync
async def _publish(topic, data):
    return await publish_topic(topic, data, None, day="2026-11-27", source_ms=1, simulated=True)


@async_to_sync
async def _state(method, *args):
    return await getattr(get_state(), method)(*args)


@pytest.fixture
def market():
    _state("value_set", keys.UNIVERSE, json.dumps(UNIVERSE))
    _publish("board:VN30", {"FPT": {"last": 99000}, "HPG": {"last": 26500}})
    _publish("quote:FPT", {"symbol": "FPT", "last": 99000})
    _publish("status", {"HOSE": "continuous"})


def test_a_token_gets_a_topic_s_snapshot_to_follow_from(client, owner_token, market):
    response = client.get(URL, {"topic": "board:VN30"}, **bearer(owner_token[1]))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    frame = json.loads(response.content)
    assert (frame["type"], frame["topic"], frame["seq"]) == ("snapshot", "board:VN30", 1)
    assert frame["data"] == {"FPT": {"last": 99000}, "HPG": {"last": 26500}}
    assert frame["epoch"].startswith("2026-11-27~")
    assert response.content.decode() == _state("topic_snapshot", "board:VN30")  # the stored frame, as is


def test_a_session_may_read_topics_too(client, owner, market):
    client.force_login(owner)
    assert json.loads(client.get(URL, {"topic": "quote:FPT"}).content)["data"]["last"] == 99000


def test_unknown_topics_get_404(client, owner_token, market):
    for name in ("board:NOPE", "quote:FPT:1", "nonsense", "", "quote:ZZZ", "index:NOPE"):
        response = client.get(URL, {"topic": name}, **bearer(owner_token[1]))
        assert (response.status_code, json.loads(response.content)["code"]) == (404, "unknown_topic"), name


def test_a_topic_outside_the_token_s_streams_is_refused(client, issue, market):
    _, index_only = issue(streams=["index"])
    response = client.get(URL, {"topic": "board:VN30"}, **bearer(index_only))
    assert response.status_code == 403 and json.loads(response.content)["code"] == "stream_forbidden"
    assert client.get(URL, {"topic": "status"}, **bearer(index_only)).status_code == 200  # open to every token


def test_no_or_bad_credentials_get_401(client, market):
    assert client.get(URL, {"topic": "status"}).status_code == 401
    response = client.get(URL, {"topic": "status"}, **bearer("stk_" + "A" * 46))
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")


def test_a_poll_makes_the_feed_build_topics_for_a_while(client, owner_token, market):
    assert _state("lease_count", keys.TOPIC_SUBSCRIBERS) == 0
    client.get(URL, {"topic": "status"}, **bearer(owner_token[1]))
    assert _state("lease_count", keys.TOPIC_SUBSCRIBERS) == 1


def test_a_topic_with_no_snapshot_yet_says_so(client, owner_token, market, monkeypatch):
    from apps.streams import snapshots

    monkeypatch.setattr(snapshots, "FIRST_WAIT", 0.2)
    response = client.get(URL, {"topic": "quote:HPG"}, **bearer(owner_token[1]))  # listed, never published
    assert response.status_code == 503 and json.loads(response.content)["code"] == "no_data"
