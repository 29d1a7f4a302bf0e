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
