"""Which pages may use the session cookie on a socket (the Origin check).

A cookie is an ambient credential: any page the browser visits could open a
socket that carries it. Only the socket's own origin, and the origins listed in
WS_ALLOWED_ORIGINS, may use it.
"""

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from .netaddr import in_networks

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(scheme, netloc):
    """(scheme, host, port) of `scheme://netloc`, or None if it is not one."""
    scheme = (scheme or "").lower()
    if scheme not in _DEFAULT_PORTS or not netloc or "@" in netloc or "/" in netloc:
        return None
    host, port = split_domain_port(netloc.lower())
    if not host:
        return None
    return scheme, host, int(port) if port else _DEFAULT_PORTS[scheme]


def origin_allowed(origin, scope):
    """May a page at `origin` use the session cookie on the socket in `scope`?

    Yes when `origin` is the socket's own origin: same scheme (wss <-> https),
    host and port as the request's Host header, with that host in ALLOWED_HOSTS
    (as Channels' AllowedHostsOriginValidator does; the ALLOWED_HOSTS check is what
    stops DNS rebinding). Yes too for any exact entry of WS_ALLOWED_ORIGINS.

    Behind a proxy: the Host header is taken as received (X-Forwarded-Host is
    never read, so the proxy must pass Host through, as deploy/nginx-site.conf
    does), and X-Forwarded-Proto is believed only from a WS_TRUSTED_PROXIES peer,
    the rule Django's SECURE_PROXY_SSL_HEADER follows here.
    """
    if not origin:
        return False
    origin = origin.strip().rstrip("/").lower()
    if origin in {entry.strip().rstrip("/").lower() for entry in settings.WS_ALLOWED_ORIGINS}:
        return True
    headers = {}
    for name, value in scope.get("headers", []):
        headers.setdefault(name, value.decode("latin-1"))
    scheme, _, netloc = origin.partition("://")
    claimed = _origin_tuple(scheme, netloc)
    host = headers.get(b"host")
    if claimed is None or not host:
        return False
    request_scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    peer = (scope.get("client") or [None])[0]
    forwarded_proto = headers.get(b"x-forwarded-proto", "").split(",")[0].strip().lower()
    if forwarded_proto in _DEFAULT_PORTS and in_networks(peer, settings.WS_TRUSTED_PROXIES):
        request_scheme = forwarded_proto
    own = _origin_tuple(request_scheme, host.strip())
    if own is None or claimed != own:
        return False
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]  # Django's own DEBUG default
    return validate_host(own[1], allowed_hosts)
