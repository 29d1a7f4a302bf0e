"""Who is the client: the peer address, or what trusted proxies say it is.

One rule for sockets, snapshot polls and /metrics. A proxy in
WS_TRUSTED_PROXIES appends the address it saw to X-Forwarded-For, so the list
is read right to left: every entry a trusted proxy wrote is believed, the
first address that is not itself a trusted proxy is the client, and anything
left of it was written by the client and is ignored.
"""

import ipaddress

from django.conf import settings


def in_networks(address, entries):
    """True if `address` is one of `entries` (addresses or networks)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in entries:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def client_ip_from(peer, forwarded=(), trusted=None):
    """The client address for a connection from `peer`.

    `forwarded`: the X-Forwarded-For header values in the order received
    (repeated headers are one list, RFC 9110 5.3). `trusted`: defaults to
    WS_TRUSTED_PROXIES.
    """
    trusted = settings.WS_TRUSTED_PROXIES if trusted is None else trusted
    peer = peer or "unknown"
    if not in_networks(peer, trusted):
        return peer
    hops = [hop.strip() for value in forwarded if value for hop in value.split(",")]
    client = peer
    for hop in reversed([hop for hop in hops if hop]):
        try:
            hop = str(ipaddress.ip_address(hop))
        except ValueError:
            # Not an address (a port, "unknown", garbage): nothing left of it
            # can be trusted; the nearest proxy is the best we know.
            return client
        client = hop
        if not in_networks(hop, trusted):
            return hop
    return client  # every hop is a trusted proxy: the leftmost one


def address_group(address):
    """What per-address limits count `address` as: an IPv6 address by its
    /WS_IPV6_PREFIX network ("2001:db8:1:2::/64"; one subscriber holds a
    whole /64, so each of its addresses would otherwise be a budget of its
    own), an IPv4 address (or an IPv4-mapped IPv6 one) as itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{settings.WS_IPV6_PREFIX}", strict=False))
    return str(ip)


def scope_client_ip(scope):
    """`client_ip_from` for an ASGI scope."""
    peer = (scope.get("client") or [None])[0]
    forwarded = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"x-forwarded-for"]
    return client_ip_from(peer, forwarded)


def request_client_ip(request):
    """`client_ip_from` for a Django request (repeated headers arrive joined)."""
    return client_ip_from(request.META.get("REMOTE_ADDR"), [request.META.get("HTTP_X_FORWARDED_FOR") or ""])
