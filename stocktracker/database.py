"""DATABASE_URL -> DATABASES["default"], with the connection settings that keep
a vanished or hung PostgreSQL from stalling a process.

A PostgreSQL URL may list several hosts, as libpq does:
`postgres://user:pass@db1:5432,db2:5432/stocktracker?target_session_attrs=read-write`
connects to the first host that accepts a read-write session, so that after a
failover new connections find the new primary. Any libpq parameter may follow
`?`; those that take whole numbers are checked here, so that a typo stops
start-up instead of the first connect.
"""

from urllib.parse import unquote, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

POSTGRES_SCHEMES = frozenset(environ.Env.POSTGRES_FAMILY)
# libpq's values (PostgreSQL 14 and later).
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
# libpq parameters that take a whole number, and the smallest one that makes sense.
WHOLE_NUMBERS = {"keepalives": 0, "keepalives_idle": 1, "keepalives_interval": 1, "keepalives_count": 1}

# A host that loses power or drops off the network sends no reset. A call
# waiting on it would hold its thread until the kernel gives up: about 15
# minutes of retransmissions for a query not yet acknowledged, two hours
# before the first keepalive probe for a reply that never comes. Probes
# after 5 s of silence, every 2 s; tcp_user_timeout then drops the connection
# once nothing has come back for a connect plus a whole statement timeout,
# about when the caller gives up on the call (apps.accounts.auth).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}
NO_STATEMENT_TIMEOUT_WAIT = 30  # seconds a stalled call may last when statements have no limit


def redact(url):
    """`url` with its password hidden: start-up errors must not print it."""
    scheme, sep, rest = url.partition("://")
    ends = [at for at in (rest.find(mark) for mark in "/?#") if at >= 0]
    netloc, tail = rest[: min(ends, default=len(rest))], rest[min(ends, default=len(rest)) :]
    userinfo, at, hosts = netloc.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hosts}{tail}"


def _invalid(url, problem):
    return ImproperlyConfigured(f"DATABASE_URL={redact(url)!r} {problem}. Fix it in the environment or .env.")


def _host_list(url):
    """Django's (HOST, PORT) from the hosts of a PostgreSQL URL, or None when it
    names none (a Unix socket path in the URL's path, or libpq's default)."""
    hostlist = urlsplit(url).netloc.rpartition("@")[2]
    if not hostlist:
        return None
    hosts, ports = [], []
    for item in hostlist.split(","):
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise _invalid(url, f"has a malformed IPv6 host {item!r}: write [address]:port")
            port = rest[1:]
        else:
            host, _, port = item.partition(":")
        host = unquote(host)  # a Unix socket directory is written %2Fvar%2Frun%2Fpostgresql
        if not host:
            raise _invalid(url, "has an empty host: write host:port,host:port")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise _invalid(url, f"has {port!r} as the port of {host!r}: ports are numbers from 1 to 65535")
        hosts.append(host)
        ports.append(port)
    if len(hosts) == 1:
        return hosts[0], int(ports[0]) if ports[0] else ""
    # One port per host; an empty one is libpq's default.
    return ",".join(hosts), ",".join(ports) if any(ports) else ""


def _check_options(url, options):
    for name, least in WHOLE_NUMBERS.items():
        if name in options:
            value = options[name]
            if not (isinstance(value, int) and value >= least):
                raise _invalid(url, f"sets {name}={value!r}: it must be a whole number of at least {least}")
    if "tcp_user_timeout" in options:
        value = options["tcp_user_timeout"]
        if not (isinstance(value, int) and value >= 0):
            raise _invalid(url, f"sets tcp_user_timeout={value!r}: milliseconds, a whole number (0 = the system's)")
    attrs = options.get("target_session_attrs", "any")
    if attrs not in TARGET_SESSION_ATTRS:
        raise _invalid(url, f"sets target_session_attrs={attrs!r}: use one of {', '.join(TARGET_SESSION_ATTRS)}")


def database(url, *, connect_timeout, statement_timeout):
    """The DATABASES entry for `url`. For PostgreSQL: the host list, the
    connect and statement timeouts, and TCP keepalives with a
    tcp_user_timeout, unless the URL sets them itself."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise _invalid(url, f"is not a valid database URL ({exc})") from None
    if scheme not in environ.Env.DB_SCHEMES:
        raise _invalid(url, "names no database this app knows: use postgres://… (or sqlite:///… for local use)")
    try:
        config = environ.Env.db_url_config(url)
    except ValueError as exc:
        raise _invalid(url, f"is not a valid database URL ({exc})") from None
    if scheme not in POSTGRES_SCHEMES:
        return config
    hosts = _host_list(url)
    if hosts is not None:
        config["HOST"], config["PORT"] = hosts
    options = config.setdefault("OPTIONS", {})
    _check_options(url, options)
    options["connect_timeout"] = connect_timeout
    if statement_timeout:
        server_options = f"-c statement_timeout={int(statement_timeout * 1000)}"
        options["options"] = f"{options.get('options', '')} {server_options}".strip()
    for name, value in KEEPALIVES.items():
        options.setdefault(name, value)
    stall = connect_timeout + (statement_timeout or NO_STATEMENT_TIMEOUT_WAIT)
    options.setdefault("tcp_user_timeout", int(stall * 1000))
    return config


def host_count(config):
    """How many hosts a connection may try, each for up to the connect timeout."""
    return len(str(config.get("HOST") or "").split(","))
