"""Start-up refuses bad configuration with a message that names the variable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage(*args, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    base.update(DEBUG="true", DATABASE_URL="sqlite:////tmp/stocktracker-settings-test.sqlite3")
    base.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WS_MAX_CONNECTIONS_PER_IP", "abc"),
        ("WS_HEARTBEAT_INTERVAL", "soon"),
        ("SSI_MAX_RPS", "0"),
        ("FEED_SOURCE", "bloomberg"),
        ("DEBUG", "maybe"),
        ("WS_MAX_INBOUND_BYTES", "-5"),
        ("LOG_FORMAT", "xml"),
        ("REDIS_SOCKET_TIMEOUT", "forever"),
        ("REDIS_CONNECT_TIMEOUT", "0"),
        ("MARKET_OPEN_DATES", "24/11/2026"),
        ("SSI_HUB_SYMBOLS_PER_LINK", "0"),
        ("MARKET_CLOSED_DATES", "2026-13-01"),
        ("REDIS_DOWN_AFTER", "1"),
        ("REDIS_DOWN_AFTER", "soon"),
        ("WS_IPV6_PREFIX", "129"),
        ("WS_IPV6_PREFIX", "0"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(name, value):
    result = manage("check", **{name: value})
    assert result.returncode != 0
    assert f"{name}=" in result.stderr
    assert "ImproperlyConfigured" in result.stderr


def test_a_date_both_open_and_closed_stops_start_up_naming_both_variables():
    result = manage("check", MARKET_OPEN_DATES="2026-11-24,2026-12-05", MARKET_CLOSED_DATES="2026-11-24")
    assert result.returncode != 0
    assert "MARKET_OPEN_DATES='2026-11-24'" in result.stderr and "MARKET_CLOSED_DATES" in result.stderr


def test_debug_off_without_a_secret_key_refuses_to_start():
    result = manage("check", DEBUG="false", SECRET_KEY="")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_the_embedded_default_needs_no_services():
    result = manage(
        "shell",
        "-v",
        "0",
        "-c",
        "from django.conf import settings as s;"
        "print(s.EMBEDDED, s.CHANNEL_LAYERS['default']['BACKEND'], s.DATABASES['default']['ENGINE'],"
        " s.FEED_SOURCE, s.FEED_IN_PROCESS, s.SIMULATOR_CLOCK)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "True",
        "channels.layers.InMemoryChannelLayer",
        "django.db.backends.sqlite3",
        "simulator",
        "True",
        "demo",
    ]


def test_redis_mode_uses_the_pubsub_layer_and_keeps_the_feed_out_of_web_processes():
    result = manage(
        "shell",
        "-v",
        "0",
        "-c",
        "from django.conf import settings as s;"
        "print(s.EMBEDDED, s.CHANNEL_LAYERS['default']['BACKEND'], s.FEED_IN_PROCESS)",
        REDIS_URL="redis://127.0.0.1:1/0",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "channels_redis.pubsub.RedisPubSubChannelLayer", "False"]


def test_ssi_credentials_switch_the_default_source_to_ssi():
    result = manage(
        "shell",
        "-v",
        "0",
        "-c",
        "from django.conf import settings as s; print(s.FEED_SOURCE)",
        SSI_CONSUMER_ID="id",
        SSI_CONSUMER_SECRET="secret",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ssi"


def test_every_channel_layer_connection_has_the_redis_timeouts():
    code = (
        "from django.conf import settings as s; h = s.CHANNEL_LAYERS['default']['CONFIG']['hosts'][0];"
        "print(h['socket_timeout'], h['socket_connect_timeout'])"
    )
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_SOCKET_TIMEOUT": "1.5", "REDIS_CONNECT_TIMEOUT": "0.7"}
    pubsub = manage("shell", "-v", "0", "-c", code, **env)
    assert pubsub.returncode == 0, pubsub.stderr
    assert pubsub.stdout.split() == ["1.5", "0.7"]


@pytest.mark.parametrize("redis_url", ["redis://127.0.0.1:1/0", ""])
def test_the_core_channel_layer_is_refused_at_start_up_saying_what_to_use(redis_url):
    # Its group memberships lived in Redis and vanished when Redis restarted empty.
    result = manage("check", CHANNEL_LAYER="core", REDIS_URL=redis_url)
    assert result.returncode != 0
    assert "CHANNEL_LAYER='core' is no longer supported" in result.stderr
    assert "Remove CHANNEL_LAYER from the environment (or set CHANNEL_LAYER=pubsub)" in result.stderr
    backend = "from django.conf import settings as s; print(s.CHANNEL_LAYERS['default']['BACKEND'])"
    chosen = manage("shell", "-v", "0", "-c", backend, CHANNEL_LAYER="pubsub", REDIS_URL=redis_url)
    assert chosen.returncode == 0, chosen.stderr


def _show(code, **env):
    result = manage("shell", "-v", "0", "-c", "from django.conf import settings as s;" + code, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_sentinel_url_gives_the_channel_layer_the_sentinels_and_a_longer_watchdog_threshold():
    code = (
        "h = s.CHANNEL_LAYERS['default']['CONFIG']['hosts'][0];"
        "print(s.EMBEDDED, h['sentinels'], h['master_name'], h['db'], h['socket_timeout'],"
        " h['sentinel_kwargs']['socket_timeout'], h['sentinel_kwargs'].get('password'), s.REDIS_DOWN_AFTER)"
    )
    url = "redis+sentinel://:master-secret@10.0.0.1:26379,10.0.0.2:26380/board/1"
    shown = _show(code, REDIS_URL=url, REDIS_SENTINEL_PASSWORD="sentinel-secret", REDIS_SOCKET_TIMEOUT="1.5")
    assert shown == ("False [('10.0.0.1', 26379), ('10.0.0.2', 26380)] board 1 1.5 1.5 sentinel-secret 45.0")
    # One server: no failover to wait for.
    assert _show("print(s.REDIS_DOWN_AFTER)", REDIS_URL="redis://127.0.0.1:1/0") == "5.0"
    assert _show("print(s.REDIS_DOWN_AFTER)", REDIS_URL=url, REDIS_DOWN_AFTER="20") == "20.0"


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:master-secret@10.0.0.1:26379",
        "redis+sentinel://:master-secret@10.0.0.1:port/board",
        "redis+sentinel://:master-secret@10.0.0.1/board/one",
        "sentinel://:master-secret@10.0.0.1/board",
    ],
)
def test_a_malformed_redis_url_stops_start_up_naming_it_and_hiding_the_password(url):
    result = manage("check", REDIS_URL=url)
    assert result.returncode != 0
    assert "REDIS_URL='" in result.stderr and "ImproperlyConfigured" in result.stderr
    assert "master-secret" not in result.stderr + result.stdout


def test_a_sentinel_password_without_a_sentinel_url_stops_start_up():
    result = manage("check", REDIS_URL="redis://127.0.0.1:1/0", REDIS_SENTINEL_PASSWORD="sentinel-secret")
    assert result.returncode != 0
    assert "REDIS_SENTINEL_PASSWORD is set but REDIS_URL is not a redis+sentinel:// URL" in result.stderr
    assert "sentinel-secret" not in result.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgres://app:s3cret-pw@db1:5432,db2:x/app", "'x' as the port of 'db2'"),
        ("postgres://app:s3cret-pw@db1,,db2/app", "an empty host"),
        ("postgres://app:s3cret-pw@[::1:5432/app", "not a valid database URL"),
        ("postgres://app:s3cret-pw@db1/app?target_session_attrs=readwrite", "target_session_attrs='readwrite'"),
        ("postgres://app:s3cret-pw@db1/app?keepalives_idle=0", "keepalives_idle=0"),
        ("postgres://app:s3cret-pw@db1/app?tcp_user_timeout=soon", "tcp_user_timeout='soon'"),
        ("postgress://app:s3cret-pw@db1/app", "names no database"),
    ],
)
def test_a_malformed_database_url_stops_start_up_naming_it_without_its_password(url, says):
    result = manage("check", DATABASE_URL=url)
    assert result.returncode != 0
    assert "ImproperlyConfigured: DATABASE_URL='postgres" in result.stderr
    assert says in result.stderr
    assert "s3cret-pw" not in result.stderr
    assert "app:***@" in result.stderr


def _database_settings(**env):
    code = (
        "import json; from django.conf import settings as s; d = s.DATABASES['default'];"
        "print(json.dumps([d['HOST'], d['PORT'], d['OPTIONS'], s.DATABASE_HOSTS]))"
    )
    result = manage("shell", "-v", "0", "-c", code, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_multi_host_database_url_keeps_each_host_with_its_own_port():
    url = "postgres://app:pw@db1.internal:5432,[fd00::2]:5433,db3/app?target_session_attrs=read-write"
    host, port, options, hosts = _database_settings(DATABASE_URL=url)
    assert (host, port, hosts) == ("db1.internal,fd00::2,db3", "5432,5433,", 3)
    assert options["target_session_attrs"] == "read-write"


def test_postgresql_connections_get_keepalives_and_a_tcp_user_timeout_that_the_url_may_override():
    url = "postgres://app:pw@db1:5432/app"
    _, port, options, hosts = _database_settings(DATABASE_URL=url, DATABASE_STATEMENT_TIMEOUT="4")
    assert (port, hosts) == (5432, 1)
    assert options["keepalives"] == 1
    assert (options["keepalives_idle"], options["keepalives_interval"], options["keepalives_count"]) == (5, 2, 3)
    # Nothing acknowledged for a connect plus a whole statement: the host is gone.
    assert options["tcp_user_timeout"] == (3 + 4) * 1000
    assert options["connect_timeout"] == 3
    assert options["options"] == "-c statement_timeout=4000"
    _, _, options, _ = _database_settings(DATABASE_URL=f"{url}?keepalives_idle=30&tcp_user_timeout=20000")
    assert (options["keepalives_idle"], options["tcp_user_timeout"]) == (30, 20000)
