"""Settings for stocktracker, read from the environment (and a `.env` file).

Every variable is listed in `.env.example` and in the README's settings table.
A value that cannot be parsed stops start-up with an `ImproperlyConfigured`
error naming the variable; cross-setting mistakes are reported by the system
checks in `stocktracker/checks.py`.
"""

import datetime
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from stocktracker.database import database, host_count

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
_env_file = BASE_DIR / ".env"
if _env_file.exists():
    environ.Env.read_env(_env_file)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _read(name, cast, default):
    """Read NAME with django-environ's cast, naming the variable if it is malformed."""
    if cast == "bool":
        # django-environ reads any unknown word as False; a typo must not flip a switch.
        raw = env.str(name, default="true" if default else "false").strip().lower()
        if raw not in _TRUE | _FALSE:
            raise ImproperlyConfigured(f"{name}={raw!r} is not a valid bool: use true or false.")
        return raw in _TRUE
    try:
        return getattr(env, cast)(name, default=default)
    except (ValueError, TypeError) as exc:
        raw = env.str(name, default="")
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a valid {cast}: {exc}. Fix it in the environment or .env."
        ) from exc


def _positive(name, cast, default, minimum=0):
    value = _read(name, cast, default)
    if value is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} must be at least {minimum}.")
    return value


def _choice(name, default, choices):
    value = env.str(name, default=default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of: {', '.join(choices)}.")
    return value


# --- Core -------------------------------------------------------------------

DEBUG = _read("DEBUG", "bool", False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set and DEBUG is off: set SECRET_KEY (50+ random characters) "
            "or DEBUG=true for local development."
        )
    SECRET_KEY = "insecure-development-key-only-for-debug-mode-do-not-deploy"  # noqa: S105

# Old keys still accepted for sessions and signed values while a new SECRET_KEY rolls out.
SECRET_KEY_FALLBACKS = _read("SECRET_KEY_FALLBACKS", "list", [])
ALLOWED_HOSTS = _read("ALLOWED_HOSTS", "list", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = _read("CSRF_TRUSTED_ORIGINS", "list", [])

INSTALLED_APPS = [
    "daphne",  # its runserver serves websockets too
    "apps.accounts",
    "apps.streams",
    "apps.feed",  # before channels: its runworker extends Channels' own
    "apps.dashboard",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "stocktracker",  # project-wide system checks
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "stocktracker.urls"
ASGI_APPLICATION = "stocktracker.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------

DATABASE_CONNECT_TIMEOUT = _positive("DATABASE_CONNECT_TIMEOUT", "int", 3, minimum=1)
DATABASE_STATEMENT_TIMEOUT = _positive("DATABASE_STATEMENT_TIMEOUT", "float", 5.0)
# A database that is down, hung or gone must turn into a quick "retry later",
# never a stalled connect or query: stocktracker/database.py bounds the
# connection attempt, each statement, and a connection whose host vanished.
DATABASES = {
    "default": database(
        env.str("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}"),
        connect_timeout=DATABASE_CONNECT_TIMEOUT,
        statement_timeout=DATABASE_STATEMENT_TIMEOUT,
    )
}
# A new connection may wait DATABASE_CONNECT_TIMEOUT on each listed host in turn.
DATABASE_HOSTS = host_count(DATABASES["default"])
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
else:
    # Web processes are async; persistent connections only help sync workers.
    DATABASES["default"]["CONN_MAX_AGE"] = _positive("DATABASE_CONN_MAX_AGE", "int", 0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# --- Channel layer and shared state ----------------------------------------

# No REDIS_URL: embedded mode (in-memory layer, in-process limits, feed inside
# the web process). With it: everything shared lives in Redis, either one
# server (redis://, rediss://, unix://) or a master found through Sentinel:
# redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]
# (stocktracker/lib/redis.py builds every client from it).
REDIS_URL = env.str("REDIS_URL", default="").strip()
EMBEDDED = not REDIS_URL
# The Sentinels' own password (`requirepass` in sentinel.conf); the master's is in REDIS_URL.
REDIS_SENTINEL_PASSWORD = env.str("REDIS_SENTINEL_PASSWORD", default="")
_behind_sentinel = False
if REDIS_URL:
    from stocktracker.lib import redis as _redis_lib

    try:
        _behind_sentinel = _redis_lib.parse_url(REDIS_URL).behind_sentinel
    except ValueError as exc:
        raise ImproperlyConfigured(f"REDIS_URL={_redis_lib.redact(REDIS_URL)!r} {exc}") from None
if REDIS_SENTINEL_PASSWORD and not _behind_sentinel:
    raise ImproperlyConfigured(
        "REDIS_SENTINEL_PASSWORD is set but REDIS_URL is not a redis+sentinel:// URL: "
        "the master's password goes into REDIS_URL; REDIS_SENTINEL_PASSWORD is only the Sentinels' own."
    )
# One channel layer: channels_redis' pub/sub layer. Its core layer (the old
# CHANNEL_LAYER=core) kept group memberships in Redis, where a restart
# without persistence lost them and left every socket silent.
_LAYER = env.str("CHANNEL_LAYER", default="pubsub").strip().lower()
if _LAYER != "pubsub":
    raise ImproperlyConfigured(
        f"CHANNEL_LAYER={_LAYER!r} is no longer supported: the pub/sub layer is the only channel layer. "
        "Remove CHANNEL_LAYER from the environment (or set CHANNEL_LAYER=pubsub)."
    )
# Every Redis connection the app opens (shared state, channel layer, the
# watchdog's own, the worker's, and those to the Sentinels) gives up on a
# reply after REDIS_SOCKET_TIMEOUT and on a connect after REDIS_CONNECT_TIMEOUT:
# a paused or stalled Redis must become a quick 1013, never a hang.
REDIS_SOCKET_TIMEOUT = _positive("REDIS_SOCKET_TIMEOUT", "float", 2.0, minimum=0.1)
REDIS_CONNECT_TIMEOUT = _positive("REDIS_CONNECT_TIMEOUT", "float", 2.0, minimum=0.1)
# Seconds Redis may fail every check (counted from the first failed one)
# before a web process closes all its sockets with 1013 (new ones are refused
# from the first failed check). Behind Sentinel the default outlasts a
# failover: Sentinel's default down-after-milliseconds (30 s), then the
# election and the promotion (a few seconds), with room for one slow vote. One
# server has no failover to wait for: 5 s is three failed checks of a hung
# Redis (the watchdog's 10 s worst case).
REDIS_DOWN_AFTER = _positive("REDIS_DOWN_AFTER", "float", 45.0 if _behind_sentinel else 5.0, minimum=2)

if EMBEDDED:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    _layer_host = _redis_lib.channel_layer_host(
        REDIS_URL,
        socket_timeout=REDIS_SOCKET_TIMEOUT,
        connect_timeout=REDIS_CONNECT_TIMEOUT,
        sentinel_password=REDIS_SENTINEL_PASSWORD,
    )
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [_layer_host], "prefix": "stk"},
        }
    }

# --- Feed -------------------------------------------------------------------

SSI_CONSUMER_ID = env.str("SSI_CONSUMER_ID", default="")
SSI_CONSUMER_SECRET = env.str("SSI_CONSUMER_SECRET", default="")
SSI_BASE_URL = env.str("SSI_BASE_URL", default="https://fc-data.ssi.com.vn/")
SSI_MAX_RPS = _read("SSI_MAX_RPS", "float", 1.0)
if SSI_MAX_RPS <= 0:
    raise ImproperlyConfigured(f"SSI_MAX_RPS={SSI_MAX_RPS!r} must be greater than 0.")
SSI_TIMEOUT = _positive("SSI_TIMEOUT", "float", 10.0)
# The FastConnect streaming hub (classic SignalR; the client appends v2.0/signalr/...).
SSI_STREAM_URL = env.str("SSI_STREAM_URL", default="https://fc-datahub.ssi.com.vn/")
if not SSI_STREAM_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"SSI_STREAM_URL={SSI_STREAM_URL!r} must start with http:// or https://.")
# false: REST polling alone (no streaming hub).
SSI_STREAMING = _read("SSI_STREAMING", "bool", True)
# Symbols one hub link subscribes at most (a link per channel string): SSI
# publishes no per-link limit; the whole market (~1,850) is one ~9 KB call.
SSI_HUB_SYMBOLS_PER_LINK = _positive("SSI_HUB_SYMBOLS_PER_LINK", "int", 2000, minimum=1)
FEED_SOURCE = _choice(
    "FEED_SOURCE", "ssi" if SSI_CONSUMER_ID and SSI_CONSUMER_SECRET else "simulator", ("ssi", "simulator")
)
# Seconds between cycles in trading hours; 0 picks the source's default
# (simulator: 1 s; SSI: long enough for one cycle's requests within SSI_MAX_RPS).
FEED_INTERVAL = _positive("FEED_INTERVAL", "float", 0.0)
FEED_IDLE_INTERVAL = _positive("FEED_IDLE_INTERVAL", "float", 60.0, minimum=1)
FEED_IN_PROCESS = _read("FEED_IN_PROCESS", "bool", EMBEDDED)
FUTURES_OVERRIDE = env.str("FUTURES_OVERRIDE", default="").strip().upper()


def _dates(name):
    """A comma-separated list of ISO dates (YYYY-MM-DD)."""
    days = set()
    for text in _read(name, "list", []):
        if not text.strip():
            continue
        try:
            days.add(datetime.date.fromisoformat(text.strip()))
        except ValueError:
            raise ImproperlyConfigured(f"{name}={text.strip()!r} is not a date: use YYYY-MM-DD.") from None
    return frozenset(days)


# The exchanges' own notices win over the `holidays` package: closures
# announced after it was released, and days it closes that the exchanges
# trade (MARKET_OPEN_DATES, any date, weekends included).
MARKET_CLOSED_DATES = _dates("MARKET_CLOSED_DATES")
MARKET_OPEN_DATES = _dates("MARKET_OPEN_DATES")
if MARKET_OPEN_DATES & MARKET_CLOSED_DATES:
    _both = ",".join(sorted(d.isoformat() for d in MARKET_OPEN_DATES & MARKET_CLOSED_DATES))
    raise ImproperlyConfigured(f"MARKET_OPEN_DATES={_both!r} are also in MARKET_CLOSED_DATES: a day is open or closed.")
EXTRA_SYMBOLS = [s.strip().upper() for s in _read("EXTRA_SYMBOLS", "list", []) if s.strip()]
SIMULATOR_CLOCK = _choice("SIMULATOR_CLOCK", "demo" if EMBEDDED else "wall", ("demo", "wall"))
SIMULATOR_SEED = _read("SIMULATOR_SEED", "int", 20261127)
# How many simulated seconds pass per real second on the demo clock.
SIMULATOR_SPEED = _read("SIMULATOR_SPEED", "float", 10.0)
if SIMULATOR_SPEED <= 0:
    raise ImproperlyConfigured(f"SIMULATOR_SPEED={SIMULATOR_SPEED!r} must be greater than 0.")
FEED_LEADER_TTL = _positive("FEED_LEADER_TTL", "float", 15.0, minimum=3)
FEED_STALE_AFTER = _positive("FEED_STALE_AFTER", "float", 0.0)
# Each stream is published at most once per this many seconds (and only when it changed).
FEED_PUBLISH_INTERVAL = _positive("FEED_PUBLISH_INTERVAL", "float", 1.0, minimum=0.05)

# --- WebSocket streams ------------------------------------------------------

WS_ALLOWED_ORIGINS = _read("WS_ALLOWED_ORIGINS", "list", ["http://127.0.0.1:8000", "http://localhost:8000"])
WS_AUTH_TIMEOUT = _positive("WS_AUTH_TIMEOUT", "float", 5.0, minimum=0.1)
# Sign-ins that need the database and fail (unknown tokens, forged cookies) per
# address per minute; past it such sign-ins get 4101 with no database query. A
# credential known to be real (a live token's prefix, a session that signed in)
# is always checked, whatever others at its address did.
WS_AUTH_FAILURES_PER_MINUTE = _positive("WS_AUTH_FAILURES_PER_MINUTE", "int", 30, minimum=1)
# Sockets one process holds before they are signed in (waiting for an `auth`
# message, or being checked); past it new sockets are refused at once (1013).
WS_MAX_UNAUTHENTICATED_PER_PROCESS = _positive("WS_MAX_UNAUTHENTICATED_PER_PROCESS", "int", 1000, minimum=1)
# Of those, from one client address (4100 past it), cookie sign-ins included:
# one address cannot take the process's whole share.
WS_MAX_UNAUTHENTICATED_PER_IP = _positive("WS_MAX_UNAUTHENTICATED_PER_IP", "int", 50, minimum=1)
# Sockets one browser session (cookie) may hold: a dashboard tab opens one per stream.
WS_MAX_CONNECTIONS_PER_SESSION = _positive("WS_MAX_CONNECTIONS_PER_SESSION", "int", 9, minimum=1)
WS_HEARTBEAT_INTERVAL = _positive("WS_HEARTBEAT_INTERVAL", "float", 30.0, minimum=0.1)
WS_HEARTBEAT_TIMEOUT = _positive("WS_HEARTBEAT_TIMEOUT", "float", 20.0, minimum=0.1)
WS_MAX_INBOUND_BYTES = _positive("WS_MAX_INBOUND_BYTES", "int", 4096, minimum=64)
WS_INBOUND_RATE = _positive("WS_INBOUND_RATE", "float", 20.0, minimum=0.1)
WS_INBOUND_BURST = _positive("WS_INBOUND_BURST", "int", 40, minimum=1)
# Token sockets per client address; session sockets count per user and per session instead.
WS_MAX_CONNECTIONS_PER_IP = _positive("WS_MAX_CONNECTIONS_PER_IP", "int", 5, minimum=1)
WS_LEASE_TTL = _positive("WS_LEASE_TTL", "float", 90.0, minimum=1)
# Past this many open sockets a web process refuses new ones at once (1013) and keeps
# serving the ones it has; size it from bench/RESULTS.md (and the open-files limit).
WS_MAX_SOCKETS_PER_PROCESS = _positive("WS_MAX_SOCKETS_PER_PROCESS", "int", 12000, minimum=1)
WS_TRUSTED_PROXIES = _read("WS_TRUSTED_PROXIES", "list", [])
# Per-address limits and budgets count an IPv6 client by its network of this
# prefix length: one subscriber usually holds a whole /64 (RFC 6177), and so
# would otherwise hold 2**64 budgets. IPv4 addresses count one by one.
WS_IPV6_PREFIX = _positive("WS_IPV6_PREFIX", "int", 64, minimum=1)
if WS_IPV6_PREFIX > 128:
    raise ImproperlyConfigured(f"WS_IPV6_PREFIX={WS_IPV6_PREFIX!r} must be at most 128.")
# Bytes that may wait for one client before it gets only the newest frame of
# each kind (conflation); a client stuck above it for WS_HEARTBEAT_TIMEOUT is closed 4103.
WS_SEND_BUFFER_BYTES = _positive("WS_SEND_BUFFER_BYTES", "int", 65536, minimum=4096)
# Threads that write one frame to a process's sockets (send() releases the GIL): a
# fan-out to thousands of sockets is kernel work, which then uses a second core.
WS_SEND_THREADS = _positive("WS_SEND_THREADS", "int", 2, minimum=1)
# On SIGTERM, sockets close with 4200 at random moments over this many seconds,
# so that clients do not all reconnect in the same instant.
WS_DRAIN_SECONDS = _positive("WS_DRAIN_SECONDS", "float", 3.0)

# --- Tokens and limits ------------------------------------------------------

TOKEN_DEFAULT_EXPIRY_DAYS = _positive("TOKEN_DEFAULT_EXPIRY_DAYS", "int", 90, minimum=1)
TOKEN_DEFAULT_MAX_CONNECTIONS = _positive("TOKEN_DEFAULT_MAX_CONNECTIONS", "int", 3, minimum=1)
USER_DEFAULT_MAX_CONNECTIONS = _positive("USER_DEFAULT_MAX_CONNECTIONS", "int", 10, minimum=1)
TOKEN_CACHE_TTL = _positive("TOKEN_CACHE_TTL", "float", 30.0)
TOKEN_RECHECK_INTERVAL = _positive("TOKEN_RECHECK_INTERVAL", "float", 30.0, minimum=1)
# Tokens not used for this many days are flagged in the admin.
TOKEN_UNUSED_DAYS = _positive("TOKEN_UNUSED_DAYS", "int", 30, minimum=1)
# Seconds between writes of the per-token usage counts (each process, one batch).
USAGE_FLUSH_INTERVAL = _positive("USAGE_FLUSH_INTERVAL", "float", 30.0, minimum=1)

# --- Operations -------------------------------------------------------------

METRICS_ALLOWED_IPS = _read("METRICS_ALLOWED_IPS", "list", ["127.0.0.1", "::1"])
LOG_LEVEL = _choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOG_FORMAT = _choice("LOG_FORMAT", "text", ("text", "json"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "stocktracker.lib.logs.RedactSecrets"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "stocktracker.lib.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"level": LOG_LEVEL, "propagate": True},
        "daphne": {"level": "WARNING" if LOG_LEVEL != "DEBUG" else "DEBUG", "propagate": True},
        # One INFO line per SSI request is noise; the feed logs what matters.
        "httpx": {"level": "WARNING" if LOG_LEVEL != "DEBUG" else "DEBUG", "propagate": True},
    },
}

# --- Static files, i18n, security -------------------------------------------

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = "Asia/Ho_Chi_Minh"
USE_I18N = True
USE_TZ = True

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if WS_TRUSTED_PROXIES else None
SECURE_SSL_REDIRECT = _read("SECURE_SSL_REDIRECT", "bool", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = _read("SECURE_COOKIES", "bool", not DEBUG)
SECURE_HSTS_SECONDS = _positive("SECURE_HSTS_SECONDS", "int", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _read("SECURE_HSTS_INCLUDE_SUBDOMAINS", "bool", False)
SECURE_HSTS_PRELOAD = _read("SECURE_HSTS_PRELOAD", "bool", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
