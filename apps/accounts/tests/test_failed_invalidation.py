"""A generation bump that shared state refuses at commit time (a Redis blip)
never lets a revoked token be accepted from a stale cache for long: quick
retries, then this process distrusts its cache for the token and a background
retrier bumps it (and re-announces the change) as soon as Redis takes it."""

import threading
import time

import pytest

from apps.accounts import signals
from apps.accounts.auth import TokenCache
from apps.accounts.signals import bump_generations, pending_bumps
from stocktracker.lib.state import RedisState, StateUnavailable

from .conftest import run_check, run_recheck

pytestmark = pytest.mark.django_db(transaction=True)


class FlakyBumps:
    """Makes RedisState.generation_bump fail `failures` times (or while `down`)."""

    def __init__(self, monkeypatch, failures=0, down=False):
        self.failures, self.down, self.attempts = failures, down, 0
        self.lock = threading.Lock()
        original = RedisState.generation_bump

        async def generation_bump(state, keys, ttl):
            with self.lock:
                self.attempts += 1
                fail = self.down or self.failures > 0
                self.failures -= 1
            if fail:
                raise StateUnavailable("simulated Redis blip")
            return await original(state, keys, ttl)

        monkeypatch.setattr(RedisState, "generation_bump", generation_bump)


def _cached_everywhere(raw):
    other_process = TokenCache()
    for _ in range(2):
        assert run_check(raw).ok
        assert run_check(raw, cache=other_process).ok
    return other_process


def test_a_blip_at_commit_time_is_retried_and_no_process_keeps_the_revoked_token(monkeypatch, owner_token, sent):
    token, raw = owner_token
    other_process = _cached_everywhere(raw)
    flaky = FlakyBumps(monkeypatch, failures=2)

    token.revoke()

    assert flaky.attempts == 3
    assert not pending_bumps
    assert run_check(raw, cache=other_process).reason == "revoked"
    assert run_check(raw).reason == "revoked"
    assert sent.count(("token", token.pk, token.user_id, "revoked")) == 1


def test_while_the_bump_fails_this_process_reads_the_database_and_the_retry_reannounces(monkeypatch, owner_token, sent):
    token, raw = owner_token
    other_process = _cached_everywhere(raw)
    socket_process = TokenCache()
    assert run_recheck(token.pk, cache=socket_process).ok
    assert run_recheck(token.pk, cache=socket_process).ok  # cached
    flaky = FlakyBumps(monkeypatch, down=True)
    monkeypatch.setattr(signals, "BUMP_BACKGROUND_DELAYS", (3600.0,))  # this test drives the retries

    started = time.monotonic()
    token.revoke()
    assert time.monotonic() - started < signals.BUMP_FOREGROUND_BUDGET + 0.5
    assert flaky.attempts == 1 + len(signals.BUMP_RETRY_DELAYS)

    # The process that made the change does not trust its cache for the token.
    assert token.prefix in pending_bumps
    assert run_check(raw).reason == "revoked"
    assert run_check(raw).reason == "revoked"
    assert run_recheck(token.pk).reason == "revoked"
    # (A real other process would keep its copy until the bump lands: the
    # documented window. Here every TokenCache shares this process's pending set.)
    assert sent == [("token", token.pk, token.user_id, "revoked")]

    assert pending_bumps.retry() is False  # Redis still refuses
    flaky.down = False
    assert pending_bumps.retry() is True

    assert not pending_bumps
    assert run_check(raw, cache=other_process).reason == "revoked"
    assert run_recheck(token.pk, cache=socket_process).reason == "revoked"
    # Announced again once the bump landed, so open sockets everywhere re-check.
    assert sent == [("token", token.pk, token.user_id, "revoked")] * 2


def test_the_background_retrier_bumps_as_soon_as_redis_takes_it(monkeypatch, owner_token, sent):
    token, raw = owner_token
    other_process = _cached_everywhere(raw)
    flaky = FlakyBumps(monkeypatch, down=True)
    monkeypatch.setattr(signals, "BUMP_BACKGROUND_DELAYS", (0.05,))

    token.revoke()
    assert token.prefix in pending_bumps
    time.sleep(0.3)
    assert token.prefix in pending_bumps  # still failing in the background
    flaky.down = False

    deadline = time.monotonic() + 5
    while pending_bumps and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pending_bumps
    assert run_check(raw, cache=other_process).reason == "revoked"
    deadline = time.monotonic() + 2
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sent == [("token", token.pk, token.user_id, "revoked")] * 2


def test_a_pending_bump_does_not_slow_other_tokens(monkeypatch, owner, owner_token, django_assert_num_queries):
    from apps.accounts.models import ApiToken

    token, _ = owner_token
    _, other_raw = ApiToken.issue(owner, label="other")
    assert run_check(other_raw).ok
    FlakyBumps(monkeypatch, down=True)
    monkeypatch.setattr(signals, "BUMP_BACKGROUND_DELAYS", (3600.0,))
    assert bump_generations([token.prefix]) is False
    with django_assert_num_queries(0):
        assert run_check(other_raw).ok
