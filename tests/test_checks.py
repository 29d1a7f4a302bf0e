"""The project's system checks catch configurations that parse but cannot work."""

import pytest
from django.core import checks

from stocktracker import checks as project_checks


def ids(messages):
    return sorted(message.id for message in messages)


def test_a_clean_configuration_passes_every_project_check():
    assert [m for m in checks.run_checks() if m.id.startswith("stocktracker.")] == []


def test_debug_with_a_public_host_is_an_error(settings):
    settings.DEBUG = True
    settings.ALLOWED_HOSTS = ["127.0.0.1", "board.example.com"]
    messages = project_checks.check_debug_hosts(None)
    assert ids(messages) == ["stocktracker.E001"]
    assert "board.example.com" in messages[0].msg


def test_debug_on_loopback_only_is_fine(settings):
    settings.DEBUG = True
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
    assert project_checks.check_debug_hosts(None) == []


def test_sqlite_with_redis_mode_is_an_error(settings):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    settings.DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}}
    assert ids(project_checks.check_database_for_redis_mode(None)) == ["stocktracker.E002"]


@pytest.mark.parametrize("missing", ["SSI_CONSUMER_ID", "SSI_CONSUMER_SECRET"])
def test_the_ssi_source_without_a_credential_is_an_error(settings, missing):
    settings.FEED_SOURCE = "ssi"
    settings.SSI_CONSUMER_ID = "id"
    settings.SSI_CONSUMER_SECRET = "secret"
    setattr(settings, missing, "")
    messages = project_checks.check_feed(None)
    assert ids(messages) == ["stocktracker.E003"]
    assert missing in messages[0].msg


def test_an_in_process_feed_in_redis_mode_is_a_warning(settings):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    settings.FEED_IN_PROCESS = True
    assert ids(project_checks.check_feed(None)) == ["stocktracker.W004"]


def test_daphne_older_than_4_2_2_is_an_error(monkeypatch):
    monkeypatch.setattr(project_checks, "version", lambda name: "4.2.1")
    assert ids(project_checks.check_daphne_version(None)) == ["stocktracker.E005"]
    monkeypatch.setattr(project_checks, "version", lambda name: "4.2.2")
    assert project_checks.check_daphne_version(None) == []


def test_a_lease_shorter_than_the_heartbeat_is_an_error(settings):
    settings.WS_HEARTBEAT_INTERVAL = 30
    settings.WS_LEASE_TTL = 20
    assert ids(project_checks.check_stream_timings(None)) == ["stocktracker.E006"]


def test_a_wildcard_origin_is_an_error(settings):
    settings.WS_ALLOWED_ORIGINS = ["*"]
    assert ids(project_checks.check_stream_timings(None)) == ["stocktracker.E007"]


def _tokens_last_used_from(addresses, django_user_model, at=None):
    from django.utils import timezone

    from apps.accounts.models import ApiToken

    for n, address in enumerate(addresses):
        user = django_user_model.objects.create_user(f"client{n}", f"c{n}@example.com", "pw-0123456789")
        token, _ = ApiToken.issue(user, label="bot")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=at or timezone.now(), last_used_ip=address)


@pytest.mark.django_db
def test_more_users_behind_one_address_than_it_may_hold_sockets_is_a_warning_without_a_trusted_proxy(
    settings, django_user_model
):
    settings.WS_TRUSTED_PROXIES = []
    _tokens_last_used_from(["203.0.113.9"] * (settings.WS_MAX_CONNECTIONS_PER_IP + 1), django_user_model)
    messages = checks.run_checks(databases=["default"])
    found = [m for m in messages if m.id == "stocktracker.W008"]
    assert len(found) == 1 and "203.0.113.9" in found[0].msg and "WS_TRUSTED_PROXIES" in found[0].msg
    assert project_checks.check_shared_client_address(None) == [], "only where database checks run"
    settings.WS_TRUSTED_PROXIES = ["10.0.0.5"]  # the balancer passes the client's address on
    assert project_checks.check_shared_client_address(None, databases=["default"]) == []
    settings.WS_TRUSTED_PROXIES = ["203.0.113.9"]  # ... or it is the trusted proxy, and passes nothing on
    assert ids(project_checks.check_shared_client_address(None, databases=["default"])) == ["stocktracker.W008"]


@pytest.mark.django_db
def test_as_many_users_as_one_address_may_hold_sockets_or_an_old_crowd_is_fine(settings, django_user_model):
    from datetime import timedelta

    from django.utils import timezone

    settings.WS_TRUSTED_PROXIES = []
    cap = settings.WS_MAX_CONNECTIONS_PER_IP
    _tokens_last_used_from(["203.0.113.9"] * cap + ["198.51.100.7"] * cap, django_user_model)
    assert project_checks.check_shared_client_address(None, databases=["default"]) == []
    from apps.accounts.models import ApiToken

    ApiToken.objects.update(last_used_ip="192.0.2.1", last_used_at=timezone.now() - timedelta(days=2))
    assert project_checks.check_shared_client_address(None, databases=["default"]) == []


@pytest.mark.django_db
def test_users_spread_over_one_ipv6_64_count_as_one_address(settings, django_user_model):
    settings.WS_TRUSTED_PROXIES = []
    crowd = [f"2001:db8:7:8::{n + 1:x}" for n in range(settings.WS_MAX_CONNECTIONS_PER_IP + 1)]
    _tokens_last_used_from(crowd, django_user_model)
    messages = project_checks.check_shared_client_address(None, databases=["default"])
    assert ids(messages) == ["stocktracker.W008"] and "2001:db8:7:8::/64" in messages[0].msg
    settings.WS_IPV6_PREFIX = 128
    assert project_checks.check_shared_client_address(None, databases=["default"]) == []
