import json
from datetime import timedelta

import pytest
from django.utils import timezone

from . import samples
from .test_board_page import lease_count

# Token checks run through channels' database_sync_to_async, which closes the
# connection a rolled-back test transaction lives on: commit for real instead.
pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/snapshot/market"


@pytest.fixture
def published():
    samples.publish_all()


def bearer(raw):
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_a_logged_in_user_gets_the_latest_snapshot_frame(client, owner, published):
    client.force_login(owner)
    response = client.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]
    frame = json.loads(response.content)
    assert frame["type"] == "snapshot"
    assert frame["stream"] == "market"
    assert {"epoch", "seq", "published_ms", "source_ms", "feed", "simulated", "data"} <= frame.keys()
    assert frame["data"]["stocks"][0]["symbol"] == "ACB"


def test_the_body_is_the_socket_frame_byte_for_byte(client, owner, published):
    from asgiref.sync import async_to_sync

    from stocktracker.lib.state import get_state

    async def latest():
        return await get_state().latest_get("index")

    client.force_login(owner)
    assert client.get("/api/v1/snapshot/index").content.decode() == async_to_sync(latest)()


def test_a_bearer_token_client_gets_the_snapshot(client, owner_token, published):
    _, raw = owner_token
    response = client.get(URL, **bearer(raw))
    assert response.status_code == 200
    assert json.loads(response.content)["stream"] == "market"


def test_a_poll_counts_as_a_subscriber_for_a_while(client, owner_token, published):
    _, raw = owner_token
    client.get("/api/v1/snapshot/foreign", **bearer(raw))
    assert lease_count("stream:foreign") == 1
    assert lease_count("stream:market") == 0


def test_anonymous_requests_get_401_not_a_login_redirect(client, published):
    response = client.get(URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(response.content)["code"] == "auth_required"


def test_an_unknown_token_gets_401(client, published):
    from apps.accounts import tokens

    response = client.get(URL, **bearer(tokens.generate()))
    assert response.status_code == 401
    assert json.loads(response.content)["code"] == "auth_failed"


def test_a_revoked_token_gets_401_saying_so(client, owner_token, published):
    token, raw = owner_token
    token.revoked_at = timezone.now()
    token.save()
    response = client.get(URL, **bearer(raw))
    assert response.status_code == 401
    assert json.loads(response.content)["code"] == "token_revoked"


def test_an_expired_token_gets_401_saying_so(client, owner_token, published):
    token, raw = owner_token
    token.expires_at = timezone.now() - timedelta(seconds=1)
    token.save()
    response = client.get(URL, **bearer(raw))
    assert response.status_code == 401
    assert json.loads(response.content)["code"] == "token_expired"


def test_a_token_without_the_stream_gets_403(client, owner, published):
    from apps.accounts.models import ApiToken

    _, raw = ApiToken.issue(owner, label="index only", streams=["index"])
    assert client.get("/api/v1/snapshot/index", **bearer(raw)).status_code == 200
    response = client.get(URL, **bearer(raw))
    assert response.status_code == 403
    assert json.loads(response.content)["code"] == "stream_forbidden"


def test_a_token_in_the_query_string_is_not_accepted(client, owner_token, published):
    _, raw = owner_token
    assert client.get(f"{URL}?token={raw}").status_code == 401


def test_an_unknown_stream_is_404(client, owner):
    client.force_login(owner)
    assert client.get("/api/v1/snapshot/bonds").status_code == 404


def test_with_no_snapshot_yet_it_answers_503_with_retry_after(client, owner):
    client.force_login(owner)
    response = client.get(URL)
    assert response.status_code == 503
    assert response["Retry-After"]
    assert json.loads(response.content)["code"] == "no_data"
