"""Which credentials are known to be real (their sign-ins skip the failed
sign-in budget): a token's prefix from the moment it is issued, on every
process; a session that signed someone in, until it expires. What this
process learned it still knows while Redis is down."""

import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from apps.accounts import known, tokens
from apps.accounts.models import ApiToken
from stocktracker.lib import keys

from .conftest import run_check

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def another_process():
    """Each test asks as a process that has seen nothing: only shared state knows."""
    known.forget_local()
    yield
    known.forget_local()


def is_known(prefix):
    return async_to_sync(known.token_known)(prefix)


def test_an_issued_token_is_known_on_every_process_and_a_forged_prefix_is_not(owner):
    _, raw = ApiToken.issue(owner, label="bot")
    known.forget_local()  # another process: it never saw the token
    assert is_known(tokens.lookup_prefix(raw))
    assert not is_known(tokens.lookup_prefix(tokens.generate()))


def test_a_token_redis_lost_is_known_again_once_the_set_is_rebuilt(owner, settings):
    import redis

    _, raw = ApiToken.issue(owner, label="bot")
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()  # a Redis restart
    client.close()
    known.forget_local()
    assert not is_known(tokens.lookup_prefix(raw))
    async_to_sync(known.rebuild_tokens)()
    known.forget_local()
    assert is_known(tokens.lookup_prefix(raw))
    assert async_to_sync(_complete)() is not None


async def _complete():
    from stocktracker.lib.state import get_state

    return await get_state().generation_get(keys.known_complete(keys.KNOWN_TOKENS))


def test_a_token_this_process_loaded_stays_known_while_redis_is_down(owner, settings):
    _, raw = ApiToken.issue(owner, label="bot")
    known.forget_local()
    assert run_check(raw).ok  # this process loads it from the database
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    from stocktracker.lib.state import reset_state

    reset_state()
    assert is_known(tokens.lookup_prefix(raw))


def test_a_session_is_known_until_it_expires():
    name = keys.session_name("k" * 32)
    async_to_sync(known.learn_session)(name, timezone.now() + timedelta(seconds=1))
    known.forget_local()
    assert async_to_sync(known.session_known)(name)
    time.sleep(1.2)
    known.forget_local()
    assert not async_to_sync(known.session_known)(name)
