"""Staff issue a token in the admin and see it exactly once."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import ApiToken

from .conftest import run_check

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = re.compile(rb"stk_[0-9A-Za-z]{46}")
ADD = "admin:accounts_apitoken_add"


def test_staff_issue_a_token_and_see_it_once(staff_client, owner):
    form = staff_client.get(reverse(ADD))
    assert b"Issue token" in form.content

    response = staff_client.post(
        reverse(ADD), {"user": owner.pk, "label": "desk bridge", "streams": ["market", "index"], "expires": "30"}
    )

    assert response.status_code == 200
    assert response["Cache-Control"].startswith("no-store")
    assert b"will not be shown again" in response.content
    (raw,) = set(TOKEN.findall(response.content))
    token = ApiToken.objects.get()
    assert (token.user, token.label, token.streams) == (owner, "desk bridge", ["market", "index"])
    assert token.expires_at - token.created_at == timedelta(days=30)
    assert run_check(raw.decode(), "index").ok
    assert run_check(raw.decode(), "foreign").reason == "stream"


def test_blank_fields_take_the_owners_defaults(staff_client, owner):
    owner.limits.default_token_streams = ["foreign"]
    owner.limits.default_token_max_connections = 2
    owner.limits.default_token_expiry_days = 14
    owner.limits.save()
    staff_client.post(reverse(ADD), {"user": owner.pk, "label": "x", "expires": "default"})
    token = ApiToken.objects.get()
    assert (token.streams, token.max_connections) == (["foreign"], 2)
    assert token.expires_at - token.created_at == timedelta(days=14)


def test_a_token_that_never_expires_must_be_chosen(staff_client, owner):
    staff_client.post(reverse(ADD), {"user": owner.pk, "label": "x", "expires": "never"})
    assert ApiToken.objects.get().expires_at is None


def test_an_expiry_date_means_through_that_day(staff_client, owner):
    day = timezone.localdate() + timedelta(days=10)
    staff_client.post(reverse(ADD), {"user": owner.pk, "label": "x", "expires": "date", "expires_on": day.isoformat()})
    expires = timezone.localtime(ApiToken.objects.get().expires_at)
    assert (expires.date(), expires.hour, expires.minute) == (day + timedelta(days=1), 0, 0)


@pytest.mark.parametrize(
    "data",
    [
        {"label": "", "expires": "30"},
        {"label": "x", "expires": "date"},
        {"label": "x", "expires": "date", "expires_on": "2001-01-01"},
        {"label": "x", "expires": "30", "max_connections": "0"},
        {"label": "x", "expires": "30", "streams": ["bonds"]},
    ],
)
def test_bad_input_issues_nothing(staff_client, owner, data):
    response = staff_client.post(reverse(ADD), {"user": owner.pk, **data})
    assert response.status_code == 200
    assert b"errornote" in response.content
    assert not TOKEN.search(response.content)
    assert not ApiToken.objects.exists()


def test_only_staff_with_permission_can_issue(client, owner):
    client.force_login(owner)
    response = client.post(reverse(ADD), {"user": owner.pk, "label": "x", "expires": "30"})
    assert response.status_code == 302  # to the admin login
    assert not ApiToken.objects.exists()
