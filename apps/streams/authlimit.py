"""A budget of failed sign-ins per client address, shared by every process.

A checksummed token costs an attacker nothing to forge, and each unknown one
would cost us a database query. Once an address has used up its budget of
failures in the current minute, its tokens are answered from the token cache
only: a token this process knows still works (an office behind one address is
not locked out by one bad client), and anything that would need the database
is refused with 4008 before any database work.

One fixed window per address in shared state. A sign-in that needs the
database first takes one unit of the budget (one atomic INCR, so concurrent
attempts cannot overshoot it) and gives it back when the token was real. If
Redis cannot answer, the budget is not enforced: the watchdog refuses connects
while Redis is down.
"""

import math
import time

from django.conf import settings

from stocktracker.lib import keys
from stocktracker.lib.state import StateUnavailable, get_state

WINDOW_S = 60


def _key(ip):
    return keys.auth_failures(ip, int(time.time() // WINDOW_S))


def retry_after() -> int:
    """Whole seconds until the current window ends and the budget is whole again."""
    return max(1, math.ceil(WINDOW_S - time.time() % WINDOW_S))


async def reserve(ip) -> bool:
    """Take one database lookup from `ip`'s budget this minute; False when none is left."""
    try:
        used = await get_state().counter_incr(_key(ip), WINDOW_S * 2)
    except StateUnavailable:
        return True
    return used <= settings.WS_AUTH_FAILURES_PER_MINUTE


async def refund(ip) -> None:
    """Give back a lookup that found a real token: only failures use up the budget."""
    try:
        await get_state().counter_decr(_key(ip))
    except StateUnavailable:
        pass
