"""Token and limit changes act on open sockets: by group message within
seconds on every process, by the periodic re-check when a message is lost,
and at the token's expiry."""

import asyncio
import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from apps.accounts.models import ApiToken
from apps.accounts.signals import token_changed, user_limits_changed

from .clients import close_code, outcome
from .conftest import closed_with, communicator, frame

pytestmark = pytest.mark.django_db(transaction=True)


def _update(token_id, **fields):
    ApiToken.objects.filter(pk=token_id).update(**fields)


async def _open(raw):
    comm = communicator(token=raw)
    await comm.connect()
    assert (await frame(comm))["type"] == "welcome"
    return comm


async def test_revocation_closes_a_socket_on_a_second_process_within_two_seconds(processes, owner_token):
    token, raw = owner_token
    processes.daphne()
    second = processes.daphne()
    result, ws = await outcome(second.ws_url, raw)
    assert result == "open"
    await sync_to_async(_update)(token.id, revoked_at=timezone.now())
    started = time.monotonic()
    token_changed.send(sender=ApiToken, token_id=token.id, user_id=token.user_id, change="revoked")
    code, frames = await close_code(ws, timeout=2)
    assert code == 4004 and frames[-1]["code"] == "token_revoked"
    assert time.monotonic() - started < 2


async def test_narrowing_the_streams_closes_4003(owner_token):
    token, raw = owner_token
    comm = await _open(raw)
    await sync_to_async(_update)(token.id, streams=["index"])
    await sync_to_async(token_changed.send)(sender=ApiToken, token_id=token.id, user_id=token.user_id, change="streams")
    code, _ = await closed_with(comm)
    assert code == 4003


async def test_a_lowered_token_cap_closes_the_newest_sockets_with_4100(issue):
    token, raw = await sync_to_async(issue)(max_connections=3)
    socks = [await _open(raw) for _ in range(3)]
    await sync_to_async(_update)(token.id, max_connections=1)
    await sync_to_async(token_changed.send)(sender=ApiToken, token_id=token.id, user_id=token.user_id, change="limits")
    for comm in socks[1:]:
        code, _ = await closed_with(comm)
        assert code == 4100
    assert await socks[0].receive_nothing(0.5)
    await socks[0].disconnect()


async def test_a_lowered_user_cap_closes_the_newest_sockets_with_4100(owner, issue):
    from apps.accounts.models import UserLimits

    _, raw_a = await sync_to_async(issue)(max_connections=5)
    _, raw_b = await sync_to_async(issue)(max_connections=5)
    socks = [await _open(raw_a), await _open(raw_b), await _open(raw_a)]
    await sync_to_async(UserLimits.objects.filter(user=owner).update)(max_connections=1)
    await sync_to_async(user_limits_changed.send)(sender=UserLimits, user_id=owner.id)
    for comm in socks[1:]:
        code, _ = await closed_with(comm)
        assert code == 4100
    assert await socks[0].receive_nothing(0.5)
    await socks[0].disconnect()


async def test_the_periodic_recheck_closes_a_revoked_token_when_the_message_was_lost(owner_token, settings):
    settings.TOKEN_RECHECK_INTERVAL = 1
    token, raw = owner_token
    comm = await _open(raw)
    await sync_to_async(_update)(token.id, revoked_at=timezone.now())  # no signal
    code, _ = await closed_with(comm, timeout=3)
    assert code == 4004


async def test_a_token_expiring_while_connected_is_closed_4005_at_its_expiry(owner_token, settings):
    settings.TOKEN_RECHECK_INTERVAL = 60
    token, raw = owner_token
    await sync_to_async(_update)(token.id, expires_at=timezone.now() + timedelta(seconds=1.5))
    comm = await _open(raw)
    started = time.monotonic()
    code, frames = await closed_with(comm, timeout=4)
    assert code == 4005 and frames[-1]["code"] == "token_expired"
    assert 0.5 < time.monotonic() - started < 3


async def test_a_rotated_token_closes_4004_when_its_grace_ends(owner_token, settings):
    settings.TOKEN_RECHECK_INTERVAL = 60
    token, raw = owner_token
    comm = await _open(raw)
    await sync_to_async(_update)(token.id, retires_at=timezone.now() + timedelta(seconds=1))
    await sync_to_async(token_changed.send)(sender=ApiToken, token_id=token.id, user_id=token.user_id, change="rotated")
    await asyncio.sleep(0)
    code, frames = await closed_with(comm, timeout=4)
    assert code == 4004 and frames[-1]["code"] == "token_retired"
