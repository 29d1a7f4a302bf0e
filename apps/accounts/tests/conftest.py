"""Helpers for the accounts tests: a sync way to run a token check, fresh
per-"process" caches, signal capture and a logged-in staff client."""

import pytest
from asgiref.sync import async_to_sync

from apps.accounts import auth


@pytest.fixture(autouse=True)
def empty_token_cache():
    from apps.accounts.signals import pending_bumps

    auth.token_cache.clear()
    yield
    auth.token_cache.clear()
    pending_bumps.clear()  # and stop the background retrier a test may have started


def run_recheck(token_id, stream="market", *, cache=None, at=None):
    """recheck_token as an open socket would call it, from sync test code."""
    cache = cache or auth.token_cache
    return async_to_sync(cache.recheck)(token_id, stream, at)


def run_check(raw, stream="market", *, cache=None, ip="127.0.0.1", at=None):
    """check_token as a connect would call it, from sync test code."""
    cache = cache or auth.token_cache

    async def check_and_settle():
        result = await cache.check(raw, stream, ip, at)
        await cache.settle()  # its last_used write runs in the background
        return result

    return async_to_sync(check_and_settle)()


@pytest.fixture
def check():
    return run_check


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks):
    """Run on-commit callbacks (generation bumps, signals) as a real commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def sent():
    """Every token_changed / user_limits_changed sent during the test, as tuples."""
    from apps.accounts.signals import token_changed, user_limits_changed

    events = []

    def on_token(sender, token_id, user_id, change, **kwargs):
        events.append(("token", token_id, user_id, change))

    def on_user(sender, user_id, **kwargs):
        events.append(("user", user_id))

    token_changed.connect(on_token, dispatch_uid="test-accounts-token")
    user_limits_changed.connect(on_user, dispatch_uid="test-accounts-user")
    yield events
    token_changed.disconnect(dispatch_uid="test-accounts-token")
    user_limits_changed.disconnect(dispatch_uid="test-accounts-user")
