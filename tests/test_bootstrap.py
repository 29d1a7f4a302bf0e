"""`make run`'s first-run set-up: a staff user and a token, printed exactly once."""

import re
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.management import call_command

from apps.accounts.auth import check_token
from apps.accounts.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)


def run_bootstrap():
    out = StringIO()
    call_command("bootstrap", stdout=out)
    return out.getvalue()


def test_the_first_run_creates_a_staff_user_and_a_working_token():
    output = run_bootstrap()
    raw = re.search(r"API token: (stk_\S+)", output).group(1)
    password = re.search(r"password (\S+)", output).group(1)
    user = get_user_model().objects.get(username="admin")
    assert user.is_staff and user.check_password(password)
    check = async_to_sync(check_token)(raw, "market")
    assert check.ok and check.user_id == user.id


def test_the_credentials_are_never_printed_again():
    first = run_bootstrap()
    raw = re.search(r"API token: (stk_\S+)", first).group(1)
    second = run_bootstrap()
    assert raw not in second and "password" not in second
    assert ApiToken.objects.count() == 1


def test_the_token_is_not_stored_in_plain_text():
    raw = re.search(r"API token: (stk_\S+)", run_bootstrap()).group(1)
    row = ApiToken.objects.values().get()
    assert all(raw not in str(value) for value in row.values())
