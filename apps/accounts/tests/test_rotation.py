"""Rotation: the new token works at once, the old one until its grace ends, to the second."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse

from apps.accounts.models import ApiToken, TokenStateError

from .conftest import run_check

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = re.compile(rb"stk_[0-9A-Za-z]{46}")


def test_the_old_token_works_until_the_grace_ends_to_the_second(owner_token):
    old, old_raw = owner_token
    new, new_raw = old.rotate(timedelta(hours=1))
    end = old.retires_at

    assert run_check(new_raw, at=new.created_at).ok
    assert run_check(old_raw, at=end - timedelta(seconds=1)).ok
    assert run_check(old_raw, at=end).reason == "retired"
    assert run_check(old_raw, at=end + timedelta(seconds=1)).reason == "retired"
    assert run_check(new_raw, at=end + timedelta(seconds=1)).ok


def test_a_zero_grace_retires_the_old_token_at_once(owner_token):
    old, old_raw = owner_token
    assert run_check(old_raw).ok
    _new, new_raw = old.rotate(timedelta(0))
    assert run_check(old_raw).reason == "retired"
    assert run_check(new_raw).ok


def test_the_new_token_keeps_streams_limits_label_and_lifetime(owner):
    old, _ = ApiToken.issue(owner, label="desk", streams=["index"], max_connections=7, expires_in=timedelta(days=30))
    new, _ = old.rotate(timedelta(minutes=5))
    assert (new.label, new.streams, new.max_connections, new.user) == ("desk", ["index"], 7, owner)
    assert new.expires_at - new.created_at == timedelta(days=30)
    assert old.replaced_by == new


def test_a_revoked_or_already_rotated_token_cannot_be_rotated(owner_token):
    old, _ = owner_token
    old.rotate(timedelta(hours=1))
    with pytest.raises(TokenStateError):
        old.rotate(timedelta(hours=1))
    other, _ = ApiToken.issue(old.user, label="x")
    other.revoke()
    with pytest.raises(TokenStateError):
        other.rotate(timedelta(0))


def test_staff_rotate_with_a_chosen_grace_and_see_the_new_token_once(staff_client, owner_token, sent):
    old, old_raw = owner_token
    url = reverse("admin:accounts_apitoken_rotate", args=[old.pk])
    assert b"Old token keeps working for" in staff_client.get(url).content

    response = staff_client.post(url, {"grace": "custom", "grace_minutes": "90", "expires": "same"})

    assert response.status_code == 200
    assert response["Cache-Control"].startswith("no-store")
    shown = TOKEN.findall(response.content)
    assert len(set(shown)) == 1
    new_raw = shown[0].decode()
    assert new_raw != old_raw
    old.refresh_from_db()
    new = ApiToken.objects.get(pk=old.replaced_by_id)
    assert new.prefix == new_raw[:12]
    assert old.retires_at - new.created_at == timedelta(minutes=90)
    assert ("token", old.pk, old.user_id, "rotated") in sent
    assert run_check(new_raw).ok
    assert run_check(old_raw).ok
    assert run_check(old_raw, at=old.retires_at).reason == "retired"
    # Never again: the new token's page, the old one's, the list.
    for page in (
        reverse("admin:accounts_apitoken_change", args=[new.pk]),
        reverse("admin:accounts_apitoken_change", args=[old.pk]),
        reverse("admin:accounts_apitoken_changelist"),
    ):
        assert new_raw.encode() not in staff_client.get(page).content


def test_staff_rotate_immediately_when_a_token_leaked(staff_client, owner_token):
    old, old_raw = owner_token
    assert run_check(old_raw).ok
    staff_client.post(reverse("admin:accounts_apitoken_rotate", args=[old.pk]), {"grace": "0", "expires": "30"})
    old.refresh_from_db()
    new = old.replaced_by
    assert run_check(old_raw).reason == "retired"
    assert new.expires_at - new.created_at == timedelta(days=30)


def test_a_custom_grace_needs_a_number(staff_client, owner_token):
    old, _ = owner_token
    response = staff_client.post(reverse("admin:accounts_apitoken_rotate", args=[old.pk]), {"grace": "custom"})
    assert response.status_code == 200
    assert b"How many minutes" in response.content
    old.refresh_from_db()
    assert old.replaced_by_id is None
