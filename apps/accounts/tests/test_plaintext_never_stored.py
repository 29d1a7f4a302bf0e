"""After creation the plaintext exists nowhere: not in any table, page, URL or log line."""

import logging
import re

import pytest
from django.db import connection
from django.urls import reverse

from apps.accounts.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = re.compile(rb"stk_[0-9A-Za-z]{46}")


def _every_value_in_the_database():
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - table names from introspection
            for row in cursor.fetchall():
                for value in row:
                    yield table, value


def _contains(value, secret):
    if isinstance(value, memoryview | bytes):
        value = bytes(value).decode("utf-8", "replace")
    return secret in str(value)


def test_the_plaintext_is_in_no_table_no_page_and_no_log(staff_client, owner, caplog):
    caplog.set_level(logging.DEBUG)
    response = staff_client.post(
        reverse("admin:accounts_apitoken_add"), {"user": owner.pk, "label": "scan me", "expires": "90"}
    )
    (raw,) = {match.decode() for match in TOKEN.findall(response.content)}
    secret = raw[12:-6]  # the part that is never shown again
    token = ApiToken.objects.get()

    # Every column of every row of every table: the token table, sessions, the admin log...
    found = [(table, value) for table, value in _every_value_in_the_database() if _contains(value, secret)]
    assert found == []
    assert token.prefix == raw[:12] and token.digest != raw

    # Every admin page that shows the token afterwards.
    pages = [
        reverse("admin:accounts_apitoken_changelist"),
        reverse("admin:accounts_apitoken_changelist") + "?q=scan",
        reverse("admin:accounts_apitoken_change", args=[token.pk]),
        reverse("admin:accounts_apitoken_history", args=[token.pk]),
        reverse("admin:accounts_apitoken_rotate", args=[token.pk]),
        reverse("admin:accounts_apitoken_revoke", args=[token.pk]),
        reverse("admin:auth_user_change", args=[owner.pk]),
        reverse("admin:index"),  # "recent actions"
    ]
    for page in pages:
        body = staff_client.get(page).content.decode()
        assert secret not in body, page
    assert token.prefix in staff_client.get(pages[2]).content.decode()  # the page does show the token

    # No redirect carried it, and nothing was logged with it.
    assert response.status_code == 200 and not response.has_header("Location")
    assert secret not in caplog.text


def test_the_rotated_plaintext_is_stored_nowhere_either(staff_client, owner_token):
    token, _ = owner_token
    response = staff_client.post(
        reverse("admin:accounts_apitoken_rotate", args=[token.pk]), {"grace": "3600", "expires": "same"}
    )
    (raw,) = {match.decode() for match in TOKEN.findall(response.content)}
    secret = raw[12:-6]
    assert [(t, v) for t, v in _every_value_in_the_database() if _contains(v, secret)] == []
    for page in (
        reverse("admin:accounts_apitoken_changelist"),
        reverse("admin:accounts_apitoken_change", args=[token.pk]),
        reverse("admin:accounts_apitoken_history", args=[token.pk]),
    ):
        assert secret not in staff_client.get(page).content.decode()
