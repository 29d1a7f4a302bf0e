"""A budget of failed sign-ins per client address, shared by every process.

A checksummed token or a session cookie costs an attacker nothing to forge,
and each unknown one would cost us a database query. A credential known to be
real (`apps.accounts.known`: a live token's lookup prefix, a session that
signed someone in) is always checked and never touches the budget, so an
honest client is not refused for what others at its address did. Any other
sign-in that needs the database first takes one unit of its address's budget
(one atomic INCR, so concurrent attempts cannot overshoot it) and gives it
back when the credential was real. Once the budget of the current minute is
used up, such sign-ins are refused with 4101 and a retry hint, before any
database work.

Addresses are counted as `netaddr.address_group` names them (an IPv6 client
by its /64). One fixed window per address, in shared state; while Redis
cannot answer, in this process (each process then allows the budget once).
"""

import math
import time

from django.conf import settings

from stocktracker.lib import keys
from stocktracker.lib.state import MemoryState, StateUnavailable, get_state

from .netaddr import address_group

WINDOW_S = 60

_local = MemoryState()  # the budget while Redis cannot answer


def _key(ip):
    return keys.auth_failures(address_group(ip), int(time.time() // WINDOW_S))


def retry_after() -> int:
    """Whole seconds until the current window ends and the budget is whole again."""
    return max(1, math.ceil(WINDOW_S - time.time() % WINDOW_S))


async def reserve(ip):
    """Take one database lookup from `ip`'s budget this minute: what was
    taken (pass it to `refund`), or None when none is left."""
    key = _key(ip)
    store = get_state()
    try:
        used = await store.counter_incr(key, WINDOW_S * 2)
    except StateUnavailable:
        store = _local
        used = await store.counter_incr(key, WINDOW_S * 2)
    return (store, key) if used <= settings.WS_AUTH_FAILURES_PER_MINUTE else None


async def refund(taken) -> None:
    """Give back a lookup that found a real credential: only failures use up the budget."""
    store, key = taken
    try:
        await store.counter_decr(key)
    except StateUnavailable:
        pass
