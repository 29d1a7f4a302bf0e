import pytest
from django.urls import reverse

from apps.accounts.auth import TokenCache, recheck_token
from apps.accounts.models import ApiToken

from .conftest import run_check

pytestmark = pytest.mark.django_db(transaction=True)


def test_staff_revoke_a_token_from_its_page(staff_client, owner_token, sent):
    token, raw = owner_token
    other_process = TokenCache()
    assert run_check(raw, cache=other_process).ok

    url = reverse("admin:accounts_apitoken_revoke", args=[token.pk])
    page = staff_client.get(url)
    assert b"Yes, revoke it" in page.content
    response = staff_client.post(url)

    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert ("token", token.pk, token.user_id, "revoked") in sent
    assert run_check(raw, cache=other_process).reason == "revoked"
    assert run_check(raw).reason == "revoked"


def test_staff_revoke_several_tokens_after_confirming(staff_client, owner, sent):
    issued = [ApiToken.issue(owner, label=f"t{i}") for i in range(3)]
    url = reverse("admin:accounts_apitoken_changelist")
    ids = [str(token.pk) for token, _ in issued[:2]]
    confirm = staff_client.post(url, {"action": "revoke_selected", "_selected_action": ids})
    assert b"Yes, revoke them" in confirm.content
    assert not ApiToken.objects.filter(revoked_at__isnull=False).exists()

    staff_client.post(url, {"action": "revoke_selected", "_selected_action": ids, "confirm": "yes"})

    assert set(ApiToken.objects.filter(revoked_at__isnull=False).values_list("pk", flat=True)) == {
        token.pk for token, _ in issued[:2]
    }
    assert sorted(e for e in sent if e[0] == "token") == sorted(
        ("token", t.pk, owner.pk, "revoked") for t, _ in issued[:2]
    )
    assert run_check(issued[2][1]).ok


def test_revoking_twice_keeps_the_first_time(owner_token):
    token, _ = owner_token
    token.revoke()
    first = ApiToken.objects.get(pk=token.pk).revoked_at
    token.revoke()
    assert ApiToken.objects.get(pk=token.pk).revoked_at == first


def test_recheck_sees_a_revocation_committed_on_another_process(owner_token):
    from asgiref.sync import async_to_sync

    token, raw = owner_token
    assert run_check(raw).ok
    assert async_to_sync(recheck_token)(token.pk, "market").ok  # answered from the cache
    ApiToken.objects.get(pk=token.pk).revoke()
    assert async_to_sync(recheck_token)(token.pk, "market").reason == "revoked"


def test_a_deleted_token_is_announced_as_revoked(owner_token, sent):
    from asgiref.sync import async_to_sync

    token, raw = owner_token
    assert run_check(raw).ok
    token_id = token.pk
    token.delete()
    assert ("token", token_id, token.user_id, "revoked") in sent
    assert run_check(raw).reason == "bad"
    assert async_to_sync(recheck_token)(token_id, "market").reason == "revoked"
