"""last_used (time, IP) is written at most about once a minute per token, however busy."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.auth import TokenCache
from apps.accounts.models import ApiToken

from .conftest import run_check

pytestmark = pytest.mark.django_db(transaction=True)


def _updates(queries):
    return [q for q in queries if q["sql"].lstrip().upper().startswith("UPDATE")]


def test_a_busy_token_is_written_once_a_minute_across_processes(owner_token):
    token, raw = owner_token
    processes = [TokenCache() for _ in range(5)]
    with CaptureQueriesContext(connection) as queries:
        for i in range(500):
            assert run_check(raw, cache=processes[i % 5], ip=f"198.51.100.{i % 5 + 1}").ok
    assert len(_updates(queries)) == 1
    token.refresh_from_db()
    assert token.last_used_ip == "198.51.100.1"
    assert token.last_used_at is not None


def test_the_conditional_update_keeps_it_to_once_a_minute_even_without_the_claim(owner_token):
    token, _ = owner_token
    assert ApiToken.touch(token.pk, "192.0.2.1")
    token.refresh_from_db()
    first = token.last_used_at
    assert not ApiToken.touch(token.pk, "192.0.2.2", at=first + timedelta(seconds=59))
    assert ApiToken.touch(token.pk, "192.0.2.3", at=first + timedelta(seconds=60))
    token.refresh_from_db()
    assert token.last_used_ip == "192.0.2.3"


def test_an_address_that_is_not_an_ip_is_stored_as_unknown(owner_token):
    token, _ = owner_token
    ApiToken.touch(token.pk, "unknown")
    token.refresh_from_db()
    assert token.last_used_at is not None and token.last_used_ip is None


def test_refused_checks_record_no_use(owner_token):
    token, raw = owner_token
    token.revoke()
    run_check(raw)
    token.refresh_from_db()
    assert token.last_used_at is None
