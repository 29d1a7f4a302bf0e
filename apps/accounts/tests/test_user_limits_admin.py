"""Staff edit users and their limits in the admin."""

import pytest
from django.conf import settings
from django.urls import reverse

from apps.accounts.models import UserLimits

pytestmark = pytest.mark.django_db(transaction=True)


def _user_form(user, **limits):
    data = {
        "username": user.username,
        "email": user.email,
        "is_active": "on",
        "date_joined_0": "2026-11-27",
        "date_joined_1": "10:00:00",
        "limits-TOTAL_FORMS": "1",
        "limits-INITIAL_FORMS": "1",
        "limits-MIN_NUM_FORMS": "1",
        "limits-MAX_NUM_FORMS": "1",
        "limits-0-id": user.limits.pk,
        "limits-0-user": user.pk,
        "limits-0-max_connections": user.limits.max_connections,
        "limits-0-default_token_streams": user.limits.default_token_streams,
        "limits-0-default_token_max_connections": user.limits.default_token_max_connections,
        "limits-0-default_token_expiry_days": user.limits.default_token_expiry_days,
    }
    data.update({f"limits-0-{key}": value for key, value in limits.items()})
    return data


def test_every_new_user_gets_limits_from_the_settings(owner):
    limits = UserLimits.objects.get(user=owner)
    assert limits.max_connections == settings.USER_DEFAULT_MAX_CONNECTIONS
    assert limits.default_token_max_connections == settings.TOKEN_DEFAULT_MAX_CONNECTIONS
    assert limits.default_token_expiry_days == settings.TOKEN_DEFAULT_EXPIRY_DAYS
    assert limits.default_token_streams == ["market", "foreign", "index"]


def test_staff_change_a_users_limits_on_the_user_page(staff_client, owner, sent):
    url = reverse("admin:auth_user_change", args=[owner.pk])
    assert "connection limits and defaults for new tokens" in staff_client.get(url).content.decode().lower()

    response = staff_client.post(url, _user_form(owner, max_connections=4, default_token_streams=["index"]))

    assert response.status_code == 302, response.content.decode()[:3000]
    owner.limits.refresh_from_db()
    assert (owner.limits.max_connections, owner.limits.default_token_streams) == (4, ["index"])
    assert ("user", owner.pk) in sent


def test_a_never_expiring_default_cannot_be_set(staff_client, owner):
    url = reverse("admin:auth_user_change", args=[owner.pk])
    response = staff_client.post(url, _user_form(owner, default_token_expiry_days=0))
    assert response.status_code == 200
    owner.limits.refresh_from_db()
    assert owner.limits.default_token_expiry_days == settings.TOKEN_DEFAULT_EXPIRY_DAYS


def test_the_user_list_shows_caps_and_token_counts_without_n_plus_one(staff_client, django_user_model):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.accounts.models import ApiToken

    def count():
        with CaptureQueriesContext(connection) as queries:
            assert staff_client.get(reverse("admin:auth_user_changelist")).status_code == 200
        return len(queries)

    few = count()
    for i in range(15):
        user = django_user_model.objects.create_user(f"u{i}")
        ApiToken.issue(user, label="x")
    assert count() == few
    body = staff_client.get(reverse("admin:auth_user_changelist")).content.decode()
    assert "connection cap" in body.lower()
    assert "?user__id__exact=" in body
