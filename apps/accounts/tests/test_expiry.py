"""Expiry: a sensible default, "never" only by explicit choice, and held to the second."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import NEVER, ApiToken

from .conftest import run_check

pytestmark = pytest.mark.django_db(transaction=True)


def test_new_tokens_expire_after_the_default_lifetime(owner):
    token, _ = ApiToken.issue(owner, label="x")
    assert token.expires_at - token.created_at == timedelta(days=settings.TOKEN_DEFAULT_EXPIRY_DAYS)


def test_the_owners_default_lifetime_applies(owner):
    owner.limits.default_token_expiry_days = 7
    owner.limits.save()
    token, _ = ApiToken.issue(owner, label="x")
    assert token.expires_at - token.created_at == timedelta(days=7)


def test_never_is_only_an_explicit_choice(owner):
    token, _ = ApiToken.issue(owner, label="x", expires_in=NEVER)
    assert token.expires_at is None
    with pytest.raises(ValueError, match="NEVER"):
        ApiToken.issue(owner, label="x", expires_in=timedelta(0))


def test_a_token_is_refused_from_the_second_it_expires(owner):
    token, raw = ApiToken.issue(owner, label="x", expires_in=timedelta(hours=1))
    assert run_check(raw, at=token.expires_at - timedelta(seconds=1)).ok
    assert run_check(raw, at=token.expires_at).reason == "expired"


def test_staff_extend_expiry_in_bulk(staff_client, owner, sent):
    token, _raw = ApiToken.issue(owner, label="x", expires_in=timedelta(days=1))
    forever, _ = ApiToken.issue(owner, label="y", expires_in=NEVER)
    before = token.expires_at
    staff_client.post(
        reverse("admin:accounts_apitoken_changelist"),
        {"action": "extend_90_days", "_selected_action": [token.pk, forever.pk]},
    )
    token.refresh_from_db()
    forever.refresh_from_db()
    assert token.expires_at == before + timedelta(days=90)
    assert forever.expires_at is None
    assert ("token", token.pk, owner.pk, "expiry") in sent


def test_staff_move_the_expiry_on_the_change_page(staff_client, owner_token, sent):
    token, raw = owner_token
    assert run_check(raw).ok
    past = timezone.localtime() - timedelta(minutes=1)
    response = staff_client.post(
        reverse("admin:accounts_apitoken_change", args=[token.pk]),
        {
            "label": token.label,
            "streams": token.streams,
            "max_connections": token.max_connections,
            "expires_at_0": past.strftime("%Y-%m-%d"),
            "expires_at_1": past.strftime("%H:%M:%S"),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert ("token", token.pk, token.user_id, "expiry") in sent
    assert run_check(raw).reason == "expired"


def test_clearing_the_expiry_needs_the_never_box(staff_client, owner_token):
    token, _ = owner_token
    url = reverse("admin:accounts_apitoken_change", args=[token.pk])
    data = {"label": token.label, "streams": token.streams, "max_connections": token.max_connections}
    response = staff_client.post(url, {**data, "expires_at_0": "", "expires_at_1": ""})
    assert response.status_code == 200
    assert "Never expires" in response.content.decode()
    token.refresh_from_db()
    assert token.expires_at is not None

    assert staff_client.post(url, {**data, "never_expires": "on"}).status_code == 302
    token.refresh_from_db()
    assert token.expires_at is None
