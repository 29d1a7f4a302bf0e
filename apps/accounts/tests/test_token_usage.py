"""Usage per token per day: batches add up, the peak is kept, staff see it, idle tokens are flagged."""

import threading
from datetime import date, timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import ApiToken, TokenUsage

pytestmark = pytest.mark.django_db(transaction=True)

DAY = date(2026, 11, 27)


def _row(token, **counts):
    return {"token_id": token.pk, "day": DAY, **counts}


def test_batches_from_several_processes_add_up_and_keep_the_highest_peak(owner_token):
    token, _ = owner_token
    TokenUsage.objects.record([_row(token, connections=2, peak=2, messages=100, bytes=5000)])
    TokenUsage.objects.record([_row(token, connections=1, peak=5, messages=10, bytes=700, rejections=3)])
    TokenUsage.objects.record([_row(token, peak=1, messages=1, bytes=1)])
    usage = TokenUsage.objects.get(token=token, day=DAY)
    assert (usage.connections, usage.peak_concurrent, usage.messages, usage.bytes, usage.rejections) == (
        3,
        5,
        111,
        5701,
        3,
    )


def test_processes_flushing_the_same_new_row_at_once_lose_nothing(owner_token):
    token, _ = owner_token
    barrier = threading.Barrier(8)

    def flush():
        barrier.wait()
        TokenUsage.objects.record([_row(token, connections=1, messages=10, bytes=100)])
        connection.close()

    threads = [threading.Thread(target=flush) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = TokenUsage.objects.get(token=token, day=DAY)
    assert (usage.connections, usage.messages, usage.bytes) == (8, 80, 800)


def test_usage_of_a_token_deleted_before_the_flush_is_dropped(owner_token):
    token, _ = owner_token
    pk = token.pk
    token.delete()
    assert TokenUsage.objects.record([{"token_id": pk, "day": DAY, "messages": 5}]) == 0
    assert not TokenUsage.objects.exists()


def test_the_token_admin_page_shows_usage_per_day(client, staff, owner_token):
    token, _ = owner_token
    today = timezone.localdate()
    TokenUsage.objects.record([{"token_id": token.pk, "day": today, "connections": 4, "peak": 3, "messages": 1234}])
    TokenUsage.objects.record([{"token_id": token.pk, "day": today - timedelta(days=1), "rejections": 7}])
    client.force_login(staff)
    html = client.get(reverse("admin:accounts_apitoken_change", args=[token.pk])).content.decode()
    assert "Usage, last 14 days" in html
    assert f"<tr><td>{today.isoformat()}</td><td>4</td><td>3</td><td>1234</td>" in html
    assert f"<td>{(today - timedelta(days=1)).isoformat()}</td>" in html and "<td>7</td></tr>" in html


def test_the_token_list_flags_tokens_unused_for_token_unused_days(client, staff, owner, settings):
    settings.TOKEN_UNUSED_DAYS = 30
    now = timezone.now()
    idle, _ = ApiToken.issue(owner, label="idle", at=now - timedelta(days=45))
    ApiToken.objects.filter(pk=idle.pk).update(last_used_at=now - timedelta(days=31))
    never, _ = ApiToken.issue(owner, label="never used", at=now - timedelta(days=40))
    fresh, _ = ApiToken.issue(owner, label="fresh", at=now - timedelta(days=45))
    ApiToken.objects.filter(pk=fresh.pk).update(last_used_at=now - timedelta(days=2))
    new, _ = ApiToken.issue(owner, label="new")
    revoked, _ = ApiToken.issue(owner, label="revoked", at=now - timedelta(days=45))
    revoked.revoke()
    client.force_login(staff)
    changelist = reverse("admin:accounts_apitoken_changelist")
    html = client.get(changelist).content.decode()
    assert html.count("unused 30+ days") == 2
    flagged = client.get(changelist, {"unused": "yes"}).content.decode()
    for token in (idle, never):
        assert token.prefix in flagged
    for token in (fresh, new, revoked):
        assert token.prefix not in flagged
