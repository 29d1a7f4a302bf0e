"""Per-address limits count an IPv6 client by its /64 (WS_IPV6_PREFIX): one
subscriber holds a whole /64, so 2**64 addresses must not be 2**64 budgets.
The failed sign-in budget, the per-IP connection cap and the cap on sockets
not signed in yet all follow it; IPv4 addresses count one by one. Real
Redis, PostgreSQL and the ASGI application, clients behind a trusted proxy."""

import pytest

from apps.accounts import tokens
from apps.streams.netaddr import address_group

from .conftest import closed_with, communicator, frame, set_caps

pytestmark = pytest.mark.django_db(transaction=True)

PROXY = ("127.0.0.1", 5000)


@pytest.mark.parametrize(
    ("address", "prefix", "group"),
    [
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", 56, "2001:db8:1::/56"),
        ("2001:db8:1:2::1", 128, "2001:db8:1:2::1/128"),
        ("::ffff:203.0.113.9", 64, "203.0.113.9"),  # an IPv4 client on a dual-stack socket
        ("203.0.113.9", 64, "203.0.113.9"),
        ("unknown", 64, "unknown"),
    ],
)
def test_an_ipv6_address_counts_as_its_network(settings, address, prefix, group):
    settings.WS_IPV6_PREFIX = prefix
    assert address_group(address) == group


def _from(address, **kwargs):
    return communicator(headers=[(b"x-forwarded-for", address.encode())], client=PROXY, **kwargs)


async def _code(comm):
    await comm.connect()
    first = await frame(comm)
    if first["type"] == "welcome":
        await comm.disconnect()
        return "welcome"
    code, _ = await closed_with(comm)
    return code


async def test_forged_tokens_from_one_64_share_one_budget(settings):
    settings.WS_TRUSTED_PROXIES = ["127.0.0.1"]
    settings.WS_AUTH_FAILURES_PER_MINUTE = 3
    # Each forgery from a new address of the same /64: they still share the budget.
    spent = [await _code(_from(f"2001:db8:1:2::{n + 1:x}", token=tokens.generate())) for n in range(5)]
    elsewhere = await _code(_from("2001:db8:1:3::1", token=tokens.generate()))
    assert spent == [4001, 4001, 4001, 4101, 4101], spent
    assert elsewhere == 4001, "another /64 has a budget of its own"


async def test_with_a_128_prefix_each_ipv6_address_has_its_own_budget(settings):
    settings.WS_TRUSTED_PROXIES = ["127.0.0.1"]
    settings.WS_AUTH_FAILURES_PER_MINUTE = 1
    settings.WS_IPV6_PREFIX = 128
    assert [await _code(_from(f"2001:db8:1:2::{n + 1:x}", token=tokens.generate())) for n in range(3)] == [4001] * 3


async def test_token_sockets_from_one_64_share_the_per_ip_cap(settings, owner_token):
    token, raw = owner_token
    settings.WS_TRUSTED_PROXIES = ["127.0.0.1"]
    settings.WS_MAX_CONNECTIONS_PER_IP = 2
    await set_caps_async(token, 10)
    held = []
    for n in range(2):
        comm = _from(f"2001:db8:9:9::{n + 1}", token=raw)
        await comm.connect()
        assert (await frame(comm))["type"] == "welcome"
        held.append(comm)
    try:
        assert await _code(_from("2001:db8:9:9::3", token=raw)) == 4100
        assert await _code(_from("2001:db8:9:a::1", token=raw)) == "welcome"
    finally:
        for comm in held:
            await comm.disconnect()


async def test_sockets_not_signed_in_from_one_64_share_the_per_ip_cap(settings):
    settings.WS_TRUSTED_PROXIES = ["127.0.0.1"]
    settings.WS_MAX_UNAUTHENTICATED_PER_IP = 2
    waiting = []
    for n in range(2):  # no credentials: waiting for an `auth` message
        comm = _from(f"2001:db8:4:4::{n + 1}")
        await comm.connect()
        waiting.append(comm)
    try:
        extra = _from("2001:db8:4:4::99")
        await extra.connect()
        code, frames = await closed_with(extra)
        assert (code, frames[-1]["code"]) == (4100, "over_limit")
        other = _from("2001:db8:4:5::1")
        await other.connect()
        assert await other.receive_nothing(0.3), "another /64 is not held up"
        await other.disconnect()
    finally:
        for comm in waiting:
            await comm.disconnect()


async def set_caps_async(token, n):
    from asgiref.sync import sync_to_async

    await sync_to_async(set_caps)(token.user, token, n)
