"""'My tokens' shows each token's usage today and over the last week."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.accounts.models import ApiToken, TokenUsage

pytestmark = pytest.mark.django_db


def test_my_tokens_shows_usage_today_and_for_the_last_seven_days(client, owner, other_user, owner_token):
    token, _ = owner_token
    today = timezone.localdate()
    rows = [
        {"token_id": token.pk, "day": today, "connections": 2, "peak": 2, "messages": 40, "bytes": 4096},
        {"token_id": token.pk, "day": today - timedelta(days=3), "connections": 5, "peak": 4, "messages": 60},
        {"token_id": token.pk, "day": today - timedelta(days=9), "connections": 100, "messages": 9999},
    ]
    TokenUsage.objects.record(rows)
    other, _ = ApiToken.issue(other_user, label="not mine")
    TokenUsage.objects.record([{"token_id": other.pk, "day": today, "messages": 77777}])
    client.force_login(owner)
    html = client.get("/tokens/").content.decode()
    assert f'data-usage="{token.prefix}" data-period="today"' in html
    today_row = html.split(f'data-usage="{token.prefix}" data-period="today"')[1].split("</tr>")[0]
    week_row = html.split(f'data-usage="{token.prefix}" data-period="week"')[1].split("</tr>")[0]
    assert '<td data-role="connections">2</td>' in today_row and '<td data-role="messages">40</td>' in today_row
    assert "4.0\xa0KB" in today_row
    assert '<td data-role="connections">7</td>' in week_row and '<td data-role="peak">4</td>' in week_row
    assert '<td data-role="messages">100</td>' in week_row  # the row from 9 days ago is outside the week
    assert "77777" not in html and other.prefix not in html
