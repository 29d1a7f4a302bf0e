"""Token, limit and user changes act on open sockets: by group message within
seconds on every process, by the periodic re-check when a message is lost,
and at the token's expiry.

Changes go through the models' own methods inside a committed transaction,
so the whole path is exercised: save/revoke/rotate -> on_commit -> new token
generation -> signal -> group_send -> every socket of the token (user)."""

import asyncio
import contextlib
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import ApiToken, UserLimits
from apps.streams import credentials

from .clients import close_code, outcome, recv_json
from .conftest import ORIGIN, closed_with, communicator, frame, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def _update(token_id, **fields):
    ApiToken.objects.filter(pk=token_id).update(**fields)


@contextlib.contextmanager
def _messages_lost():
    """Changes still commit and get new generations, but no group message
    reaches the sockets: only the periodic re-check can find them."""
    from apps.accounts.signals import token_changed, user_limits_changed
    from apps.streams import live

    token_changed.disconnect(dispatch_uid="streams.token_changed")
    user_limits_changed.disconnect(dispatch_uid="streams.user_limits_changed")
    try:
        yield
    finally:
        live.connect_receivers()


async def _committed(change):
    """Run `change()` in a transaction and commit it (on_commit hooks fire)."""

    def run():
        with transaction.atomic():
            change()

    await sync_to_async(run)()


def _token(token_id):
    return ApiToken.objects.get(pk=token_id)


def _set(obj, **fields):
    for name, value in fields.items():
        setattr(obj, name, value)
    obj.save()


async def _open(raw):
    comm = communicator(token=raw)
    await comm.connect()
    assert (await frame(comm))["type"] == "welcome"
    return comm


async def _open_session(user):
    comm = communicator(headers=[await session_cookie(user), (b"origin", ORIGIN.encode())])
    await comm.connect()
    assert (await frame(comm))["type"] == "welcome"
    return comm


async def test_revocation_closes_a_socket_on_a_second_process_within_two_seconds(processes, owner_token):
    token, raw = owner_token
    first = processes.daphne()
    second = processes.daphne()
    for _ in range(2):  # the first process now holds the token in its cache
        result, ws = await outcome(first.ws_url, raw)
        assert result == "open"
        await ws.close()
    result, ws = await outcome(second.ws_url, raw)
    assert result == "open"
    started = asyncio.get_running_loop().time()
    await _committed(lambda: _token(token.id).revoke())
    code, frames = await close_code(ws, timeout=5)
    assert code == 4004 and frames[-1]["code"] == "token_revoked"
    assert asyncio.get_running_loop().time() - started < 2
    # The commit also gave the token a new generation: no process uses its cached copy.
    assert (await outcome(first.ws_url, raw))[0] == 4004


async def test_narrowing_the_streams_closes_4003(owner_token):
    token, raw = owner_token
    comm = await _open(raw)
    await _committed(lambda: _set(_token(token.id), streams=["index"]))
    code, _ = await closed_with(comm)
    assert code == 4003


async def test_a_lowered_token_cap_closes_the_newest_sockets_with_4100(issue):
    token, raw = await sync_to_async(issue)(max_connections=3)
    socks = [await _open(raw) for _ in range(3)]
    await _committed(lambda: _set(_token(token.id), max_connections=1))
    for comm in socks[1:]:
        code, _ = await closed_with(comm)
        assert code == 4100
    assert await socks[0].receive_nothing(0.5)
    await socks[0].disconnect()


async def test_a_lowered_user_cap_closes_the_newest_sockets_with_4100(owner, issue):
    _, raw_a = await sync_to_async(issue)(max_connections=5)
    _, raw_b = await sync_to_async(issue)(max_connections=5)
    socks = [await _open(raw_a), await _open(raw_b), await _open(raw_a)]
    await _committed(lambda: _set(UserLimits.objects.get(user=owner), max_connections=1))
    for comm in socks[1:]:
        code, _ = await closed_with(comm)
        assert code == 4100
    assert await socks[0].receive_nothing(0.5)
    await socks[0].disconnect()


async def test_the_periodic_recheck_closes_a_revoked_token_when_the_message_was_lost(owner_token, settings):
    settings.TOKEN_RECHECK_INTERVAL = 1
    token, raw = owner_token
    comm = await _open(raw)
    with _messages_lost():
        await _committed(lambda: _token(token.id).revoke())
        code, _ = await closed_with(comm, timeout=4)
    assert code == 4004


async def test_a_token_expiring_while_connected_is_closed_4005_at_its_expiry(owner_token, settings):
    settings.TOKEN_RECHECK_INTERVAL = 60
    token, raw = owner_token
    expires_at = timezone.now() + timedelta(seconds=3)
    await sync_to_async(_update)(token.id, expires_at=expires_at)
    comm = await _open(raw)
    code, frames = await closed_with(comm, timeout=(expires_at - timezone.now()).total_seconds() + 3)
    late = (timezone.now() - expires_at).total_seconds()
    assert code == 4005 and frames[-1]["code"] == "token_expired"
    assert 0 <= late < 2, f"closed {late:.2f} s after the expiry"


async def test_a_rotated_token_closes_4004_when_its_grace_ends(owner_token, settings):
    settings.TOKEN_RECHECK_INTERVAL = 60
    token, raw = owner_token
    comm = await _open(raw)
    rotated = {}

    def rotate():
        old = _token(token.id)
        rotated["new"] = old.rotate(timedelta(seconds=1))
        rotated["retires_at"] = old.retires_at

    await _committed(rotate)
    code, frames = await closed_with(comm, timeout=5)
    late = (timezone.now() - rotated["retires_at"]).total_seconds()
    assert code == 4004 and frames[-1]["code"] == "token_retired"
    assert 0 <= late < 2, f"closed {late:.2f} s after the grace ended"
    new_comm = await _open(rotated["new"][1])  # the replacement works
    await new_comm.disconnect()


# --- session (dashboard) sockets ---------------------------------------------------


async def test_deactivating_a_user_closes_their_session_and_token_sockets_4004(owner, owner_token):
    session = await _open_session(owner)
    token_socket = await _open(owner_token[1])
    await _committed(lambda: _set(get_user_model().objects.get(pk=owner.pk), is_active=False))
    code, frames = await closed_with(session)
    assert code == 4004 and frames[-1]["code"] == "session_revoked"
    code, _ = await closed_with(token_socket)
    assert code == 4004


async def test_deleting_a_user_closes_their_session_sockets_4004(owner, other_user):
    session = await _open_session(owner)
    bystander = await _open_session(other_user)
    await _committed(lambda: get_user_model().objects.get(pk=owner.pk).delete())
    code, frames = await closed_with(session)
    assert code == 4004 and frames[-1]["code"] == "session_revoked"
    assert await bystander.receive_nothing(0.5)
    await bystander.disconnect()


async def test_the_periodic_recheck_closes_a_deactivated_users_session_when_the_message_was_lost(owner, settings):
    settings.TOKEN_RECHECK_INTERVAL = 1
    session = await _open_session(owner)
    with _messages_lost():
        await _committed(lambda: _set(get_user_model().objects.get(pk=owner.pk), is_active=False))
        code, _ = await closed_with(session, timeout=4)
    assert code == 4004


async def test_a_session_of_a_user_deleted_before_the_connect_finishes_is_refused(owner, monkeypatch):
    original = credentials.session_sign_in

    async def deleted_meanwhile(session_key):
        await sync_to_async(get_user_model().objects.filter(pk=owner.pk).delete)()
        return await original(session_key)

    monkeypatch.setattr(credentials, "session_sign_in", deleted_meanwhile)
    comm = communicator(headers=[await session_cookie(owner), (b"origin", ORIGIN.encode())])
    await comm.connect()
    code, _ = await closed_with(comm)
    assert code == 4001


# --- a failing re-check never takes the socket down ------------------------------


async def test_a_failing_recheck_is_logged_and_the_socket_and_its_loop_go_on(owner_token, settings, monkeypatch):
    settings.TOKEN_RECHECK_INTERVAL = 1
    token, raw = owner_token
    original, calls = credentials.recheck_token, []

    async def flaky(token_id, stream):
        calls.append(token_id)
        if len(calls) <= 2:
            raise RuntimeError("database went away")
        return await original(token_id, stream)

    comm = await _open(raw)
    monkeypatch.setattr(credentials, "recheck_token", flaky)  # after the connect's own check
    # The message handler fails first...
    await _committed(lambda: _set(_token(token.id), max_connections=4))
    await asyncio.sleep(0.3)
    await comm.send_to(text_data='{"type":"ping"}')
    assert (await frame(comm))["type"] == "pong"
    # ...then the periodic loop once; its retry still closes the revoked token.
    with _messages_lost():
        await _committed(lambda: _token(token.id).revoke())
        code, _ = await closed_with(comm, timeout=6)
    assert code == 4004 and len(calls) >= 3


async def test_a_failing_heartbeat_is_logged_and_the_next_one_comes(owner_token, settings, monkeypatch):
    from apps.streams import sessions

    settings.WS_HEARTBEAT_INTERVAL = 0.3
    original, calls = sessions.Registry.renew, []

    async def flaky(self):
        calls.append(1)
        if len(calls) == 1:  # the first renewal of this process's leases
            raise RuntimeError("unexpected")
        return await original(self)

    monkeypatch.setattr(sessions.Registry, "renew", flaky)
    comm = await _open(owner_token[1])
    kinds = [(await frame(comm, 2))["type"] for _ in range(3)]
    assert kinds.count("heartbeat") == 3 and len(calls) >= 2
    await comm.disconnect()


async def test_session_sockets_survive_a_recheck_message(owner):
    session = await _open_session(owner)
    await _committed(lambda: _set(UserLimits.objects.get(user=owner), max_connections=7))
    await session.send_to(text_data='{"type":"ping"}')
    assert (await frame(session))["type"] == "pong"
    await session.disconnect()


async def test_a_real_session_socket_is_closed_on_a_second_process_when_its_user_is_deactivated(processes, owner):
    import websockets
    from django.conf import settings

    server = processes.daphne(SECRET_KEY=settings.SECRET_KEY)  # the cookie is signed here
    headers = {"Cookie": (await session_cookie(owner))[1].decode(), "Origin": ORIGIN}
    async with websockets.connect(server.ws_url + "/ws/market", additional_headers=headers) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await _committed(lambda: _set(get_user_model().objects.get(pk=owner.pk), is_active=False))
        code, frames = await close_code(ws, timeout=5)
    assert code == 4004 and frames[-1]["code"] == "session_revoked"


def test_a_session_users_check_is_one_query(owner, other_user, django_assert_num_queries):
    from asgiref.sync import async_to_sync
    from django.conf import settings

    from apps.accounts.auth import session_user_check

    UserLimits.objects.filter(user=owner).update(max_connections=3)
    with django_assert_num_queries(1):
        assert async_to_sync(session_user_check)(owner.pk) == (True, 3)
    UserLimits.objects.filter(user=other_user).delete()  # no limits row: the defaults, nothing created
    get_user_model().objects.filter(pk=other_user.pk).update(is_active=False)
    assert async_to_sync(session_user_check)(other_user.pk) == (False, settings.USER_DEFAULT_MAX_CONNECTIONS)
    assert not UserLimits.objects.filter(user=other_user).exists()
    assert async_to_sync(session_user_check)(10**9) == (False, None)
