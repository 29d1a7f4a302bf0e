"""A session socket from the page's own origin needs no configuration: same
scheme, host and port as the request, with the host in ALLOWED_HOSTS.
WS_ALLOWED_ORIGINS only adds other origins."""

import pytest

from apps.streams.origin import origin_allowed

from .conftest import closed_with, communicator, frame, session_cookie


def scope(host, *, scheme="ws", peer="198.51.100.7", **extra):
    headers = [(b"host", host.encode())] if host is not None else []
    headers += [(name.replace("_", "-").encode(), value.encode()) for name, value in extra.items()]
    return {"type": "websocket", "scheme": scheme, "headers": headers, "client": [peer, 50000]}


@pytest.fixture(autouse=True)
def defaults(settings):
    settings.WS_ALLOWED_ORIGINS = []
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", ".board.example"]
    settings.WS_TRUSTED_PROXIES = ["10.9.0.0/16"]
    settings.DEBUG = False


@pytest.mark.parametrize(
    "origin, host, scheme",
    [
        ("http://127.0.0.1:8123", "127.0.0.1:8123", "ws"),
        ("http://localhost:41000", "localhost:41000", "ws"),
        ("http://[::1]:9000", "[::1]:9000", "ws"),
        ("https://live.board.example", "live.board.example", "wss"),
        ("https://live.board.example:443", "live.board.example", "wss"),  # default port written out
        ("http://LIVE.Board.Example", "live.board.example:80", "ws"),
        ("http://127.0.0.1:8123/", "127.0.0.1:8123", "ws"),
    ],
)
def test_the_pages_own_origin_is_allowed_without_configuration(origin, host, scheme):
    assert origin_allowed(origin, scope(host, scheme=scheme))


@pytest.mark.parametrize(
    "origin, host, scheme",
    [
        ("http://127.0.0.1:8124", "127.0.0.1:8123", "ws"),  # another port
        ("https://127.0.0.1:8123", "127.0.0.1:8123", "ws"),  # another scheme
        ("http://live.board.example", "live.board.example", "wss"),  # http page, wss socket
        ("http://evil.example:8123", "127.0.0.1:8123", "ws"),  # another site
        ("http://127.0.0.1:8123.evil.com", "127.0.0.1:8123", "ws"),
        ("http://user@127.0.0.1:8123", "127.0.0.1:8123", "ws"),
        ("null", "127.0.0.1:8123", "ws"),  # sandboxed frames, file:// pages
        ("", "127.0.0.1:8123", "ws"),
        (None, "127.0.0.1:8123", "ws"),
        ("http://127.0.0.1:8123", None, "ws"),  # no Host: nothing to compare with
        ("file://127.0.0.1:8123", "127.0.0.1:8123", "ws"),
        # DNS rebinding: the attacker's name points at us; the page and Host agree,
        # but the name is not one of ours.
        ("http://rebind.evil.example:8123", "rebind.evil.example:8123", "ws"),
    ],
)
def test_anything_else_is_refused(origin, host, scheme):
    assert not origin_allowed(origin, scope(host, scheme=scheme))


def test_configured_origins_are_added_to_the_own_origin(settings):
    settings.WS_ALLOWED_ORIGINS = ["https://partner.example"]
    assert origin_allowed("https://partner.example", scope("127.0.0.1:8123"))
    assert origin_allowed("http://127.0.0.1:8123", scope("127.0.0.1:8123"))
    assert not origin_allowed("https://other.example", scope("127.0.0.1:8123"))


def test_forwarded_proto_counts_only_from_a_trusted_proxy():
    # nginx terminates TLS and speaks plain HTTP to daphne.
    behind = scope("live.board.example", peer="10.9.0.2", x_forwarded_proto="https")
    assert origin_allowed("https://live.board.example", behind)
    assert not origin_allowed("http://live.board.example", behind)
    # The same header straight from a client changes nothing.
    direct = scope("live.board.example", peer="198.51.100.7", x_forwarded_proto="https")
    assert not origin_allowed("https://live.board.example", direct)
    assert origin_allowed("http://live.board.example", direct)


def test_forwarded_host_is_never_read():
    spoofed = scope("127.0.0.1:8123", peer="10.9.0.2", x_forwarded_host="evil.example")
    assert not origin_allowed("http://evil.example", spoofed)
    assert origin_allowed("http://127.0.0.1:8123", spoofed)


def test_debug_with_no_allowed_hosts_admits_only_loopback_names(settings):
    settings.DEBUG = True
    settings.ALLOWED_HOSTS = []
    assert origin_allowed("http://localhost:8000", scope("localhost:8000"))
    assert not origin_allowed("http://evil.example:8000", scope("evil.example:8000"))


@pytest.mark.django_db(transaction=True)
async def test_a_session_from_the_sockets_own_origin_gets_the_stream(owner):
    cookie = await session_cookie(owner)
    comm = communicator(headers=[cookie, (b"host", b"127.0.0.1:8123"), (b"origin", b"http://127.0.0.1:8123")])
    await comm.connect()
    assert (await frame(comm))["type"] == "welcome"
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_cross_site_page_with_a_valid_session_is_still_refused(owner):
    cookie = await session_cookie(owner)
    comm = communicator(headers=[cookie, (b"host", b"127.0.0.1:8123"), (b"origin", b"https://evil.example")])
    await comm.connect()
    code, frames = await closed_with(comm)
    assert code == 4003
    assert frames[-1]["code"] == "origin_forbidden"
