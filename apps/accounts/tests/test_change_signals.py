"""Every change that matters to open sockets is announced once, after commit, and only then."""

from datetime import timedelta

import pytest
from django.db import transaction

from apps.accounts.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)


def _token_events(sent):
    return [e[1:] for e in sent if e[0] == "token"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.revoke(), "revoked"),
        (lambda t: t.rotate(timedelta(minutes=1)), "rotated"),
        (lambda t: t.set_expiry(t.expires_at + timedelta(days=1)), "expiry"),
        (lambda t: setattr(t, "streams", ["market"]) or t.save(), "streams"),
        (lambda t: setattr(t, "max_connections", 1) or t.save(), "limits"),
    ],
)
def test_each_change_sends_token_changed_with_its_kind(owner_token, sent, change, expected):
    token, _ = owner_token
    change(token)
    assert _token_events(sent) == [(token.pk, token.user_id, expected)]


def test_a_label_change_or_a_no_op_save_sends_nothing(owner_token, sent):
    token, _ = owner_token
    token.label = "renamed"
    token.save()
    token.save()
    assert _token_events(sent) == []


def test_nothing_is_sent_until_commit_and_nothing_for_a_rollback(owner_token, sent):
    token, _ = owner_token
    with transaction.atomic():
        token.revoke()
        assert sent == []
    assert _token_events(sent) == [(token.pk, token.user_id, "revoked")]

    other, _ = ApiToken.issue(token.user, label="x")
    with pytest.raises(RuntimeError), transaction.atomic():
        other.revoke()
        raise RuntimeError
    assert len(_token_events(sent)) == 1


def test_changing_a_users_cap_sends_user_limits_changed(owner, sent):
    owner.limits.max_connections = 2
    owner.limits.save()
    owner.limits.default_token_max_connections = 1  # a default for new tokens: nothing open changes
    owner.limits.save()
    assert sent == [("user", owner.pk)]


def test_deactivating_a_user_revokes_their_tokens_in_effect(owner, sent):
    tokens = [ApiToken.issue(owner, label=f"t{i}")[0] for i in range(2)]
    owner.is_active = False
    owner.save()
    assert sorted(_token_events(sent)) == sorted((t.pk, owner.pk, "revoked") for t in tokens)
    assert ("user", owner.pk) in sent


def test_a_login_announces_nothing(client, owner, sent):
    from conftest import PASSWORD

    assert client.login(username="owner", password=PASSWORD)
    assert sent == []


def test_a_failing_receiver_cannot_undo_or_hide_a_change(owner_token, sent, caplog):
    from apps.accounts.signals import token_changed

    def broken(**kwargs):
        raise RuntimeError("receiver down")

    token_changed.connect(broken, dispatch_uid="broken")
    try:
        token, _ = owner_token
        token.revoke()
    finally:
        token_changed.disconnect(dispatch_uid="broken")
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    assert _token_events(sent) == [(token.pk, token.user_id, "revoked")]
    assert "receiver down" in caplog.text
