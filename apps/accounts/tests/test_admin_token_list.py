"""The token list: what staff see, how they narrow it, and that it costs the same for 2 or 40 rows."""

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import NEVER, ApiToken
from stocktracker.lib.state import get_state

pytestmark = pytest.mark.django_db(transaction=True)

LIST = reverse("admin:accounts_apitoken_changelist")


def _make(owner, n):
    return [ApiToken.issue(owner, label=f"bot {i}")[0] for i in range(n)]


def _queries_for_list(client, **params):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(LIST, params)
    assert response.status_code == 200
    return len(queries)


def test_the_list_costs_the_same_number_of_queries_for_any_number_of_rows(staff_client, owner, other_user):
    _make(owner, 2)
    few = _queries_for_list(staff_client)
    _make(owner, 20)
    _make(other_user, 18)
    many = _queries_for_list(staff_client)
    assert few == many
    assert many <= 8
    assert _queries_for_list(staff_client, status="active") == _queries_for_list(staff_client, stream="index")


def test_the_list_shows_owner_label_prefix_streams_expiry_last_use_live_count_and_status(staff_client, owner):
    token, _ = ApiToken.issue(owner, label="desk bridge", streams=["market", "index"])
    ApiToken.touch(token.pk, "203.0.113.9")

    async def connect_two():
        await get_state().lease_acquire("conn-a", [(f"token:{token.pk}", 5)], 60)
        await get_state().lease_acquire("conn-b", [(f"token:{token.pk}", 5)], 60)

    async_to_sync(connect_two)()

    body = staff_client.get(LIST).content.decode()
    for text in ("owner", "desk bridge", token.prefix, "market, index", "203.0.113.9", "active"):
        assert text in body, text
    assert '<td class="field-live_connections">2</td>' in body


def test_status_filter_and_status_column_agree(staff_client, owner):
    now = timezone.now()
    _active, _ = ApiToken.issue(owner, label="active one", expires_in=timedelta(days=60))
    _expiring, _ = ApiToken.issue(owner, label="expiring one", expires_in=timedelta(days=2))
    _expired, _ = ApiToken.issue(owner, label="expired one", expires_at=now - timedelta(seconds=1))
    revoked, _ = ApiToken.issue(owner, label="revoked one", expires_in=NEVER)
    revoked.revoke()
    rotated, _ = ApiToken.issue(owner, label="rotated one", expires_in=timedelta(days=60))
    rotated.rotate(timedelta(hours=1))  # in grace: expiring; its replacement: active
    expected = {
        "active": {"active one", "rotated one (new)"},
        "expiring": {"expiring one", "rotated one"},
        "expired": {"expired one"},
        "revoked": {"revoked one"},
    }
    ApiToken.objects.filter(replaces__isnull=False).update(label="rotated one (new)")
    for status, labels in expected.items():
        shown = {t.label for t in ApiToken.objects.filter(ApiToken.objects.status_q(status))}
        assert shown == labels, status
        body = staff_client.get(LIST, {"status": status}).content.decode()
        for label in labels:
            assert label in body
        for token in ApiToken.objects.with_status().filter(label__in=labels):
            assert token.status == status == token.status_at()


def test_staff_filter_by_stream_and_search_by_prefix_label_or_owner(staff_client, owner, other_user):
    _market, _ = ApiToken.issue(owner, label="market feed", streams=["market"])
    index, _ = ApiToken.issue(other_user, label="index feed", streams=["index"])

    def labels(**params):
        body = staff_client.get(LIST, params).content.decode()
        return {label for label in ("market feed", "index feed") if label in body}

    assert labels(stream="market") == {"market feed"}
    assert labels(stream="index") == {"index feed"}
    assert labels(q=index.prefix) == {"index feed"}
    assert labels(q="other") == {"index feed"}
    assert labels(q="market") == {"market feed"}


def test_the_change_page_shows_the_live_count_and_the_rotate_and_revoke_buttons(staff_client, owner_token):
    token, _ = owner_token
    body = staff_client.get(reverse("admin:accounts_apitoken_change", args=[token.pk])).content.decode()
    assert reverse("admin:accounts_apitoken_rotate", args=[token.pk]) in body
    assert reverse("admin:accounts_apitoken_revoke", args=[token.pk]) in body
    assert "field-live_connections" in body


def test_staff_narrow_streams_and_lower_the_connection_limit(staff_client, owner_token, sent):
    from .conftest import run_check

    token, raw = owner_token
    assert run_check(raw, "foreign").ok
    staff_client.post(
        reverse("admin:accounts_apitoken_change", args=[token.pk]),
        {
            "label": token.label,
            "streams": ["market"],
            "max_connections": 1,
            "expires_at_0": timezone.localtime(token.expires_at).strftime("%Y-%m-%d"),
            "expires_at_1": timezone.localtime(token.expires_at).strftime("%H:%M:%S"),
        },
    )
    token.refresh_from_db()
    assert (token.streams, token.max_connections) == (["market"], 1)
    changes = {e[3] for e in sent if e[0] == "token" and e[1] == token.pk}
    assert changes == {"streams", "limits"}
    assert run_check(raw, "foreign").reason == "stream"
    assert run_check(raw, "market").token_max_connections == 1
