"""A token revoked, or its user deactivated, after the connect's credential
check but before the socket joined its control groups still closes within
2 s: the change's group message went out before this socket (or this process)
listened, so the connect must notice it by itself.

The change is committed for real (on_commit, new token generation, signal,
group message over Redis) from inside the credential check's wrapper, right
after the check returned its grant."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client

from apps.accounts.models import ApiToken
from apps.streams import credentials

from .conftest import ORIGIN, closed_with, communicator, frame, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def _committed(change):
    def run():
        with transaction.atomic():
            change()

    await sync_to_async(run)()


def _revoke(token_id):
    ApiToken.objects.get(pk=token_id).revoke()


def _deactivate(user_id):
    user = get_user_model().objects.get(pk=user_id)
    user.is_active = False
    user.save()


def _change_right_after(monkeypatch, name, change):
    """Run `change` (committed) right after `credentials.<name>` returns."""
    original = getattr(credentials, name)

    async def checked_then_changed(*args, **kwargs):
        result = await original(*args, **kwargs)
        await _committed(change)
        return result

    monkeypatch.setattr(credentials, name, checked_then_changed)


async def _open(headers):
    comm = communicator(headers=headers)
    await comm.connect()
    assert (await frame(comm))["type"] == "welcome"
    return comm


async def _closed_within_two_seconds(comm, code, error):
    started = asyncio.get_running_loop().time()
    await comm.connect()
    closed, frames = await closed_with(comm, timeout=4)
    took = asyncio.get_running_loop().time() - started
    assert (closed, frames[-1]["code"]) == (code, error), frames
    assert took < 2, f"closed after {took:.2f} s"


@pytest.mark.parametrize("already_open", [False, True], ids=["first-socket", "another-socket-open"])
async def test_a_token_revoked_between_check_and_join_closes_4004_within_two_seconds(
    owner_token, monkeypatch, already_open
):
    token, raw = owner_token
    bearer = [(b"authorization", f"Bearer {raw}".encode())]
    # With a socket of the token already open the process is subscribed: the
    # message arrives, but before the new socket is a member.
    first = await _open(bearer) if already_open else None
    _change_right_after(monkeypatch, "token_grant", lambda: _revoke(token.id))
    await _closed_within_two_seconds(communicator(token=raw), 4004, "token_revoked")
    if first is not None:
        assert (await closed_with(first))[0] == 4004


async def test_a_user_deactivated_between_token_check_and_join_closes_4004_within_two_seconds(
    owner, owner_token, monkeypatch
):
    _, raw = owner_token
    _change_right_after(monkeypatch, "token_grant", lambda: _deactivate(owner.pk))
    await _closed_within_two_seconds(communicator(token=raw), 4004, "token_revoked")


async def test_a_user_deactivated_between_session_check_and_join_closes_4004_within_two_seconds(owner, monkeypatch):
    headers = [await session_cookie(owner), (b"origin", ORIGIN.encode())]
    _change_right_after(monkeypatch, "session_grant", lambda: _deactivate(owner.pk))
    await _closed_within_two_seconds(communicator(headers=headers), 4004, "session_revoked")


async def test_a_session_logged_out_between_its_check_and_the_join_closes_4001_within_two_seconds(owner, monkeypatch):
    client = Client()
    await sync_to_async(client.force_login)(owner)
    key = client.cookies["sessionid"].value
    headers = [(b"cookie", f"sessionid={key}".encode()), (b"origin", ORIGIN.encode())]
    _change_right_after(monkeypatch, "session_grant", client.logout)
    await _closed_within_two_seconds(communicator(headers=headers), 4001, "signed_out")
