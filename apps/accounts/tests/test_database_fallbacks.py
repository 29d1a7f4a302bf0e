"""When PostgreSQL fails mid-query (OperationalError, as from a dropped
connection), token and session checks say "retry later"
(AccountsUnavailable), never "refused" and never a raw database error; the
token cache answers where it still knows enough: a copy under an unchanged
generation past TOKEN_CACHE_TTL, a known expiry on time. The failure is
injected at the database driver's edge, under the real queries."""

import contextlib
import datetime as dt

import pytest
from asgiref.sync import async_to_sync
from django.db import OperationalError, connection
from django.utils import timezone

from apps.accounts import auth, sessions
from apps.accounts.auth import AccountsUnavailable, TokenCache
from apps.accounts.models import ApiToken
from stocktracker.lib import keys
from stocktracker.lib.state import get_state

from .conftest import run_check

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def database_answers_again(monkeypatch):
    """Each test starts with the database counted as up (a failure keeps it
    "down" for DATABASE_CONNECT_TIMEOUT, process-wide)."""
    monkeypatch.setattr(auth, "_database_down_until", 0.0)


@contextlib.contextmanager
def database_fails(only=""):
    """Every query (or every one starting with `only`) fails as a dropped connection does."""
    attempts = []

    def fail(execute, sql, params, many, context):
        if not sql.lstrip().upper().startswith(only):
            return execute(sql, params, many, context)
        attempts.append(sql)
        raise OperationalError("server closed the connection unexpectedly")

    with connection.execute_wrapper(fail):
        yield attempts


def bump(prefix):
    """A change announced for the token (as a committed revoke or edit would)."""

    async def announce():
        await get_state().generation_bump([keys.token_generation(prefix)], 60)

    async_to_sync(announce)()


def recheck(cache, token_id, at=None):
    return async_to_sync(cache.recheck_or_known)(token_id, "market", at)


def test_a_copy_under_an_unchanged_generation_is_used_past_the_cache_ttl_while_the_database_fails(owner_token):
    _, raw = owner_token
    cache = TokenCache(ttl=0)  # every copy is past TOKEN_CACHE_TTL at once
    assert run_check(raw, cache=cache).ok
    with database_fails() as attempts:
        assert run_check(raw, cache=cache).ok
    assert attempts, "the database was not asked: the copy was not past its TTL"


def test_a_copy_whose_generation_changed_is_not_trusted_while_the_database_fails(owner_token):
    token, raw = owner_token
    cache = TokenCache(ttl=0)
    assert run_check(raw, cache=cache).ok
    bump(token.prefix)
    with database_fails(), pytest.raises(AccountsUnavailable):
        run_check(raw, cache=cache)


def test_a_token_this_process_never_loaded_gets_retry_later_not_refused(owner_token):
    _, raw = owner_token
    with database_fails(), pytest.raises(AccountsUnavailable):
        run_check(raw)


def test_a_known_expiry_refuses_on_time_while_the_database_fails(owner):
    expires = timezone.now() + dt.timedelta(hours=1)
    token, raw = ApiToken.issue(owner, label="expiring", expires_at=expires)
    cache = TokenCache()
    assert run_check(raw, cache=cache).ok
    bump(token.prefix)  # a change the copy has not seen: only the database can say more
    with database_fails():
        assert recheck(cache, token.pk, at=expires + dt.timedelta(seconds=1)).reason == "expired"
        auth._database_down_until = 0.0
        with pytest.raises(AccountsUnavailable):
            recheck(cache, token.pk, at=expires - dt.timedelta(seconds=1))  # not ended by time: unknown


def test_after_a_failure_the_database_is_left_alone_for_a_connect_timeout(owner_token, settings):
    _, raw = owner_token
    settings.DATABASE_CONNECT_TIMEOUT = 0.5
    with database_fails(), pytest.raises(AccountsUnavailable):
        run_check(raw)
    with database_fails() as attempts, pytest.raises(AccountsUnavailable, match="failed moments ago"):
        run_check(raw, cache=TokenCache())
    assert attempts == []  # answered at once, without queueing on the database thread
    auth._database_down_until -= 0.5
    assert run_check(raw, cache=TokenCache()).ok


def test_a_failed_last_used_write_never_fails_the_check(owner_token, caplog):
    token, raw = owner_token
    with database_fails(only="UPDATE") as attempts:
        assert run_check(raw).ok
    assert attempts and "could not record last use of token" in caplog.text
    token.refresh_from_db()
    assert token.last_used_at is None


def test_a_session_sockets_user_check_says_retry_later(owner):
    with database_fails(), pytest.raises(AccountsUnavailable):
        async_to_sync(auth.session_user_check)(owner.pk)


def test_a_session_check_says_retry_later(owner):
    with database_fails(), pytest.raises(AccountsUnavailable):
        async_to_sync(sessions.session_check)("a-session-key", owner.pk)
