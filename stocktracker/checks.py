"""System checks for misconfiguration that parses fine but cannot work.

Run by `manage.py check` (and `check --deploy`), and before runserver,
migrate and runworker.
"""

import ipaddress
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

MIN_DAPHNE = (4, 2, 2)


def _is_loopback(host):
    host = host.strip("[]")
    if host in ("localhost", ".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _version_tuple(text):
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (3 - len(parts)))


@register(Tags.security, deploy=False)
def check_debug_hosts(app_configs, **kwargs):
    if settings.DEBUG and not all(_is_loopback(h) for h in settings.ALLOWED_HOSTS):
        exposed = [h for h in settings.ALLOWED_HOSTS if not _is_loopback(h)]
        return [
            Error(
                f"DEBUG is on while ALLOWED_HOSTS admits {', '.join(exposed)}.",
                hint="Debug pages leak settings and code: set DEBUG=false anywhere but loopback.",
                id="stocktracker.E001",
            )
        ]
    return []


@register(Tags.database)
def check_database_for_redis_mode(app_configs, **kwargs):
    if settings.REDIS_URL and settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        return [
            Error(
                "REDIS_URL is set (multi-process mode) but DATABASE_URL is SQLite.",
                hint="Several web and worker processes need a shared server database: use PostgreSQL.",
                id="stocktracker.E002",
            )
        ]
    return []


@register()
def check_feed(app_configs, **kwargs):
    errors = []
    if settings.FEED_SOURCE == "ssi":
        missing = [n for n in ("SSI_CONSUMER_ID", "SSI_CONSUMER_SECRET") if not getattr(settings, n)]
        if missing:
            errors.append(
                Error(
                    f"FEED_SOURCE=ssi but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set.",
                    hint="Create the credentials on SSI iBoard (API service) or use FEED_SOURCE=simulator.",
                    id="stocktracker.E003",
                )
            )
    if settings.REDIS_URL and settings.FEED_IN_PROCESS:
        errors.append(
            Warning(
                "FEED_IN_PROCESS=true with REDIS_URL: every web process will try to run the feed.",
                hint="Run `python manage.py runworker` instead and leave FEED_IN_PROCESS unset.",
                id="stocktracker.W004",
            )
        )
    return errors


@register()
def check_daphne_version(app_configs, **kwargs):
    try:
        installed = version("daphne")
    except PackageNotFoundError:
        return [Error("daphne is not installed.", id="stocktracker.E005")]
    if _version_tuple(installed) < MIN_DAPHNE:
        return [
            Error(
                f"daphne {installed} is installed; stocktracker needs 4.2.2 or newer.",
                hint="Older daphne has no WebSocket message size limit and accepts smuggled upgrade headers.",
                id="stocktracker.E005",
            )
        ]
    return []


@register()
def check_stream_timings(app_configs, **kwargs):
    errors = []
    if settings.WS_LEASE_TTL <= settings.WS_HEARTBEAT_INTERVAL:
        errors.append(
            Error(
                f"WS_LEASE_TTL ({settings.WS_LEASE_TTL:g} s) must be longer than "
                f"WS_HEARTBEAT_INTERVAL ({settings.WS_HEARTBEAT_INTERVAL:g} s).",
                hint="Leases are renewed by the heartbeat; a shorter TTL drops live connections from the limits.",
                id="stocktracker.E006",
            )
        )
    if any(origin.strip() == "*" for origin in settings.WS_ALLOWED_ORIGINS):
        errors.append(
            Error(
                "WS_ALLOWED_ORIGINS contains '*'.",
                hint="Any web page could then open the dashboard's sockets with a visitor's session: list origins.",
                id="stocktracker.E007",
            )
        )
    return errors


# How far back the shared-address check looks at where tokens were last used.
SHARED_ADDRESS_WINDOW = timedelta(hours=24)


@register(Tags.database)
def check_shared_client_address(app_configs, databases=None, **kwargs):
    """Many users behind one client address, with no trusted proxy: most
    likely a TCP load balancer or a proxy whose X-Forwarded-For (or PROXY
    protocol) is not used, so every client shares one set of per-address
    limits and one failed sign-in budget.

    Read from where tokens were last used in the past day (an IPv6 client by
    its /WS_IPV6_PREFIX). The line: more distinct users than
    WS_MAX_CONNECTIONS_PER_IP, the token sockets one address may hold. Past
    it the users cannot each hold one socket, so the limit is already wrong
    for them, be it a balancer (every user) or a large office behind NAT.
    Runs where database checks run (`migrate`, the release step;
    `check --database default`)."""
    if not databases:
        return []
    from django.db import DatabaseError
    from django.utils import timezone

    from apps.accounts.models import ApiToken
    from apps.streams.netaddr import address_group, in_networks

    since = timezone.now() - SHARED_ADDRESS_WINDOW
    try:
        used = ApiToken.objects.filter(last_used_at__gte=since, last_used_ip__isnull=False)
        pairs = list(used.values_list("last_used_ip", "user_id").distinct())
    except DatabaseError:
        return []  # no tables yet (before the first migrate), or no database: nothing to read
    users = {}
    for ip, user_id in pairs:
        users.setdefault(address_group(ip), set()).add(user_id)
    trusted = settings.WS_TRUSTED_PROXIES
    crowded = {
        address: len(found)
        for address, found in users.items()
        if len(found) > settings.WS_MAX_CONNECTIONS_PER_IP and (not trusted or in_networks(address, trusted))
    }
    if not crowded:
        return []
    address, count = max(crowded.items(), key=lambda item: item[1])
    where = "no WS_TRUSTED_PROXIES is set" if not trusted else "that address is a trusted proxy itself"
    return [
        Warning(
            f"{count} users' tokens were last used from {address} in the past day and {where}: "
            "they share one per-address connection limit and one failed sign-in budget.",
            hint="Behind a proxy or load balancer, list it in WS_TRUSTED_PROXIES and have it pass the client's "
            "address (X-Forwarded-For; behind a TCP balancer, the PROXY protocol: docs/deploy.md). "
            "For an office behind NAT, raise WS_MAX_CONNECTIONS_PER_IP.",
            id="stocktracker.W008",
        )
    ]
