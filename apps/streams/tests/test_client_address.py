"""The client address behind trusted proxies: X-Forwarded-For is read right to
left past every trusted proxy; the first untrusted address is the client.
One rule for sockets, snapshot polls (last_used_ip) and /metrics."""

import pytest

from apps.accounts.models import ApiToken
from apps.streams.netaddr import client_ip_from, scope_client_ip
from stocktracker.lib.state import get_state

from .conftest import communicator, frame

PROXIES = ["10.0.0.0/8", "192.168.1.1"]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", ["6.6.6.6"], "203.0.113.9"),  # an untrusted peer cannot claim an address
        ("10.0.0.5", [], "10.0.0.5"),  # a trusted proxy that says nothing
        ("10.0.0.5", ["203.0.113.7"], "203.0.113.7"),
        ("10.0.0.5", ["6.6.6.6, 203.0.113.7"], "203.0.113.7"),  # the left part is the client's own
        # chained proxies: nginx (10.0.0.5) behind a load balancer (192.168.1.1)
        ("10.0.0.5", ["6.6.6.6, 203.0.113.7, 192.168.1.1"], "203.0.113.7"),
        ("10.0.0.5", ["6.6.6.6, 203.0.113.7", "10.2.3.4"], "203.0.113.7"),  # repeated headers, in order
        ("10.0.0.5", ["10.2.3.4, 10.0.0.9"], "10.2.3.4"),  # all trusted: the farthest one
        ("10.0.0.5", ["6.6.6.6, not-an-ip, 10.2.3.4"], "10.2.3.4"),  # garbage: stop at the nearest proxy
        ("10.0.0.5", [" 2001:DB8::1 "], "2001:db8::1"),
        (None, ["6.6.6.6"], "unknown"),
    ],
)
def test_the_client_is_the_first_untrusted_address_from_the_right(peer, forwarded, client):
    assert client_ip_from(peer, forwarded, trusted=PROXIES) == client


def test_it_reads_every_forwarded_header_of_a_scope(settings):
    settings.WS_TRUSTED_PROXIES = PROXIES
    scope = {
        "client": ["10.0.0.5", 1234],
        "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.7"), (b"x-forwarded-for", b"192.168.1.1")],
    }
    assert scope_client_ip(scope) == "203.0.113.7"


@pytest.mark.django_db(transaction=True)
async def test_sockets_behind_chained_proxies_count_the_real_client(owner_token, settings):
    settings.WS_TRUSTED_PROXIES = PROXIES
    xff = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.7, 192.168.1.1")]
    comm = communicator(token=owner_token[1], headers=xff, client=("10.0.0.5", 1))
    await comm.connect()
    await frame(comm)
    assert [info["ip"] for info in await get_state().entries()] == ["203.0.113.7"]
    assert await get_state().lease_count("ip:203.0.113.7") == 1
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
def test_a_snapshot_poll_through_a_proxy_records_the_client_as_last_used_ip(client, owner_token, settings):
    settings.WS_TRUSTED_PROXIES = PROXIES
    token, raw = owner_token
    client.get(
        "/api/v1/snapshot/market",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
        HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7",
        REMOTE_ADDR="10.0.0.5",
    )
    assert ApiToken.objects.get(pk=token.pk).last_used_ip == "203.0.113.7"


@pytest.mark.django_db(transaction=True)
def test_metrics_behind_chained_proxies_see_the_real_client(client, settings):
    settings.WS_TRUSTED_PROXIES = PROXIES
    settings.METRICS_ALLOWED_IPS = ["203.0.113.0/24"]
    forwarded = {"REMOTE_ADDR": "10.0.0.5"}
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.7, 192.168.1.1", **forwarded).status_code == 200
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.7, 8.8.8.8", **forwarded).status_code == 403
