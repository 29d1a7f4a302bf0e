"""A reconnect storm (and the re-checks of open sockets) is served from the
cache; every change is seen at once."""

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.auth import TokenCache
from stocktracker.lib import redis as redis_lib

from .conftest import run_check, run_recheck

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_thousand_checks_of_one_token_cost_a_handful_of_queries(owner_token):
    _, raw = owner_token
    with CaptureQueriesContext(connection) as queries:
        results = [run_check(raw) for _ in range(1000)]
    assert all(result.ok for result in results)
    # One load, plus the once-a-minute last_used write.
    assert len(queries) <= 3, [q["sql"] for q in queries]


def test_a_check_answers_everything_the_consumer_needs(owner, owner_token):
    token, raw = owner_token
    result = run_check(raw, "index")
    assert result.ok
    assert (result.token_id, result.token_prefix, result.user_id, result.username) == (
        token.pk,
        token.prefix,
        owner.pk,
        "owner",
    )
    assert result.token_max_connections == settings.TOKEN_DEFAULT_MAX_CONNECTIONS
    assert result.user_max_connections == settings.USER_DEFAULT_MAX_CONNECTIONS
    assert result.expires_at == token.expires_at
    assert result.streams == ("market", "foreign", "index")


def test_revoking_is_seen_on_the_next_check_by_every_process(owner_token):
    token, raw = owner_token
    other_process = TokenCache()
    assert run_check(raw).ok
    assert run_check(raw, cache=other_process).ok
    assert run_check(raw).ok  # both now answer from their caches

    token.revoke()

    assert run_check(raw).reason == "revoked"
    assert run_check(raw, cache=other_process).reason == "revoked"


@pytest.mark.parametrize(
    ("change", "stream", "reason"),
    [
        (lambda t: t.set_expiry(t.created_at), "market", "expired"),
        (lambda t: setattr(t, "streams", ["index"]) or t.save(), "market", "stream"),
    ],
)
def test_changes_are_seen_on_the_next_check(owner_token, change, stream, reason):
    token, raw = owner_token
    other_process = TokenCache()
    assert run_check(raw, stream, cache=other_process).ok
    change(token)
    assert run_check(raw, stream, cache=other_process).reason == reason


def test_deactivating_the_owner_refuses_the_token_on_every_process(owner, owner_token):
    _, raw = owner_token
    other_process = TokenCache()
    assert run_check(raw, cache=other_process).ok
    owner.is_active = False
    owner.save()
    assert run_check(raw, cache=other_process).reason == "revoked"


def test_lowering_the_users_cap_is_seen_on_the_next_check(owner, owner_token):
    _, raw = owner_token
    assert run_check(raw).user_max_connections == settings.USER_DEFAULT_MAX_CONNECTIONS
    owner.limits.max_connections = 1
    owner.limits.save()
    assert run_check(raw).user_max_connections == 1


def test_a_flushed_redis_makes_the_cache_reload_from_the_database(owner_token, django_assert_max_num_queries):
    token, raw = owner_token
    assert run_check(raw).ok
    client = redis_lib.sync_client()
    client.flushdb()
    # Revoked behind the cache's back (no announcement), then Redis lost every generation.
    type(token).objects.filter(pk=token.pk).update(revoked_at=token.created_at)
    assert run_check(raw).reason == "revoked"
    client.close()


def test_a_cached_copy_expires_after_the_cache_ttl(owner_token):
    token, raw = owner_token
    cache = TokenCache(ttl=0)
    assert run_check(raw, cache=cache).ok
    type(token).objects.filter(pk=token.pk).update(revoked_at=token.created_at)  # no announcement
    assert run_check(raw, cache=cache).reason == "revoked"


def test_a_wrong_secret_behind_a_real_prefix_is_refused_from_the_cache(owner_token, django_assert_num_queries):
    from apps.accounts import tokens

    _, raw = owner_token
    assert run_check(raw).ok
    body = raw[4:-6]
    forged_body = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    forged = "stk_" + forged_body + tokens.checksum(forged_body)
    with django_assert_num_queries(0):
        assert run_check(forged).reason == "bad"


def test_a_token_issued_after_its_prefix_was_cached_as_unknown_is_accepted(owner):
    from apps.accounts import tokens
    from apps.accounts.models import ApiToken

    raw = tokens.generate()
    assert run_check(raw).reason == "bad"  # cached as "no such token"
    token = ApiToken(
        user=owner, label="x", prefix=tokens.lookup_prefix(raw), digest=tokens.digest(raw), max_connections=1
    )
    token.save()
    assert run_check(raw).ok


def test_without_redis_checks_fall_back_to_the_database(owner_token, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    from stocktracker.lib.state import reset_state

    reset_state()
    token, raw = owner_token
    assert run_check(raw).ok
    type(token).objects.filter(pk=token.pk).update(revoked_at=token.created_at)
    assert run_check(raw).reason == "revoked"


def test_embedded_mode_caches_and_invalidates_in_process(embedded, owner_token):
    token, raw = owner_token
    with CaptureQueriesContext(connection) as queries:
        for _ in range(200):
            assert run_check(raw).ok
    assert len(queries) <= 3
    token.revoke()
    assert run_check(raw).reason == "revoked"


# --- re-checks of open sockets ---------------------------------------------------


def test_rechecks_of_open_sockets_are_answered_from_the_cache(owner_token):
    token, raw = owner_token
    assert run_check(raw).ok  # the connect loads the token
    with CaptureQueriesContext(connection) as queries:
        results = [run_recheck(token.pk) for _ in range(1000)]
    assert all(result.ok for result in results)
    assert len(queries) == 0, [q["sql"] for q in queries]


def test_a_token_this_process_never_loaded_is_rechecked_by_id_then_from_the_cache(owner_token):
    token, _ = owner_token
    cache = TokenCache()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(100):
            assert run_recheck(token.pk, cache=cache).ok
    assert len(queries) <= 2, [q["sql"] for q in queries]


@pytest.mark.parametrize(
    ("change", "stream", "reason"),
    [
        (lambda t: t.revoke(), "market", "revoked"),
        (lambda t: t.rotate(timedelta(0)), "market", "retired"),
        (lambda t: t.set_expiry(t.created_at), "market", "expired"),
        (lambda t: setattr(t, "streams", ["index"]) or t.save(), "market", "stream"),
        (lambda t: t.user.__setattr__("is_active", False) or t.user.save(), "market", "revoked"),
        (lambda t: t.delete(), "market", "revoked"),
    ],
)
def test_a_committed_change_is_seen_by_the_next_recheck_on_every_process(owner_token, change, stream, reason):
    token, raw = owner_token
    other_process = TokenCache()
    token_id = token.pk
    assert run_check(raw, stream, cache=other_process).ok
    assert run_recheck(token_id, stream, cache=other_process).ok  # from the cache
    change(token)
    assert run_recheck(token_id, stream, cache=other_process).reason == reason


def test_lowered_caps_are_seen_by_the_next_recheck(owner, owner_token):
    token, raw = owner_token
    other_process = TokenCache()
    assert run_check(raw, cache=other_process).ok
    token.max_connections = 1
    token.save()
    owner.limits.max_connections = 2
    owner.limits.save()
    result = run_recheck(token.pk, cache=other_process)
    assert (result.token_max_connections, result.user_max_connections) == (1, 2)


def test_a_recheck_evaluates_expiry_at_the_moment_of_the_recheck(owner_token, django_assert_num_queries):
    token, raw = owner_token
    assert run_check(raw).ok
    with django_assert_num_queries(0):
        assert run_recheck(token.pk, at=token.expires_at - timedelta(seconds=1)).ok
        assert run_recheck(token.pk, at=token.expires_at).reason == "expired"


def test_a_change_behind_accounts_back_reaches_rechecks_after_the_cache_ttl(owner_token):
    token, raw = owner_token
    cache = TokenCache(ttl=0)
    assert run_check(raw, cache=cache).ok
    type(token).objects.filter(pk=token.pk).update(revoked_at=token.created_at)  # no announcement
    assert run_recheck(token.pk, cache=cache).reason == "revoked"


def test_without_redis_rechecks_read_the_database(owner_token, settings):
    from stocktracker.lib.state import reset_state

    token, raw = owner_token
    assert run_check(raw).ok
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    reset_state()
    type(token).objects.filter(pk=token.pk).update(revoked_at=token.created_at)
    assert run_recheck(token.pk).reason == "revoked"


def test_a_flood_of_forged_tokens_never_pushes_a_real_token_out_of_the_cache(owner_token):
    from apps.accounts import tokens

    _, raw = owner_token
    cache = TokenCache(max_entries=10, max_unknown=5)
    assert run_check(raw, cache=cache).ok
    forged = [tokens.generate() for _ in range(200)]  # well-formed, checksummed, unknown
    assert all(run_check(fake, cache=cache).reason == "bad" for fake in forged)
    with CaptureQueriesContext(connection) as queries:
        assert run_check(raw, cache=cache).ok
    assert len(queries) == 0, [q["sql"] for q in queries]


def test_a_cache_only_check_answers_known_tokens_and_declines_the_rest(owner_token):
    from apps.accounts import tokens

    _, raw = owner_token
    cache = TokenCache()
    run_check(raw, cache=cache), run_check(raw, cache=cache)
    check = async_to_sync(cache.check)
    with CaptureQueriesContext(connection) as queries:
        assert check(raw, "market", load=False).ok
        assert check(tokens.generate(), "market", load=False) is None
        assert check("stk_not-even-well-formed", "market", load=False).reason == "bad"
    assert len(queries) == 0


def _forget_generation(token):
    """What Redis looks like after a restart or the generation's expiry: no generation for the token."""
    from stocktracker.lib import keys

    client = redis_lib.sync_client()
    client.delete(f"stk:gen:{keys.token_generation(token.prefix)}")
    client.close()


def _token_lookups(queries):
    return [q["sql"] for q in queries if q["sql"].startswith("SELECT") and "accounts_apitoken" in q["sql"]]


def test_a_connect_storm_of_one_unseen_token_reads_it_once(owner_token):
    import asyncio

    token, raw = owner_token
    _forget_generation(token)
    cache = TokenCache()

    async def storm():
        results = await asyncio.gather(*(cache.check(raw, "market", "127.0.0.1") for _ in range(200)))
        later = [await cache.check(raw, "market", "127.0.0.1") for _ in range(50)]
        await cache.settle()
        return results + later

    with CaptureQueriesContext(connection) as queries:
        results = async_to_sync(storm)()
    assert all(result.ok for result in results)
    assert len(_token_lookups(queries)) == 1, _token_lookups(queries)


def test_a_check_that_reads_the_generation_a_first_use_just_created_shares_its_query(owner_token, monkeypatch):
    """The storm's race, made certain: a check reads the generation the
    first-use load has just created, before that load has cached its copy
    (a Redis reply still on its way). It must not query again."""
    import asyncio

    from stocktracker.lib.state import get_state

    token, raw = owner_token
    _forget_generation(token)
    cache = TokenCache()
    created = None

    async def first_use_and_a_late_check():
        state = get_state()  # this loop's
        init = state.generation_init

        async def init_then_a_slow_reply(key, ttl):
            nonlocal created
            value = await init(key, ttl)
            created = value
            await asyncio.sleep(0.2)  # the reply to SET NX is late; the key is in Redis already
            return value

        monkeypatch.setattr(state, "generation_init", init_then_a_slow_reply)
        first = asyncio.ensure_future(cache.check(raw, "market", "127.0.0.1"))
        while created is None:
            await asyncio.sleep(0.005)
        late = await cache.check(raw, "market", "127.0.0.1")  # reads the new generation
        return [await first, late]

    with CaptureQueriesContext(connection) as queries:
        results = async_to_sync(first_use_and_a_late_check)()
    assert all(result.ok for result in results)
    assert len(_token_lookups(queries)) == 1, _token_lookups(queries)


def test_a_change_announced_while_a_first_use_loads_is_seen_by_the_next_check(owner_token, monkeypatch):
    from channels.db import database_sync_to_async

    from apps.accounts import auth
    from apps.accounts.signals import GENERATION_TTL
    from stocktracker.lib import keys
    from stocktracker.lib.state import get_state

    token, raw = owner_token
    _forget_generation(token)
    cache = TokenCache()
    load = auth._load_snapshot_async

    async def load_then_another_process_revokes(**lookup):
        snapshot = await load(**lookup)
        # Another process revokes the token right after our read and announces it
        # before this process could create the generation.
        await database_sync_to_async(type(token).objects.filter(pk=token.pk).update)(revoked_at=token.created_at)
        await get_state().generation_bump([keys.token_generation(token.prefix)], GENERATION_TTL)
        return snapshot

    monkeypatch.setattr(auth, "_load_snapshot_async", load_then_another_process_revokes)
    assert run_check(raw, cache=cache).ok  # what was read before the revocation
    monkeypatch.setattr(auth, "_load_snapshot_async", load)
    assert run_check(raw, cache=cache).reason == "revoked"
