"""A budget of failed sign-ins per client address, shared by every process.

A checksummed token costs an attacker nothing to forge, and each unknown one
would cost us a database query. Once an address has used up its budget of
failures in the current minute, its tokens are answered from the token cache
only: a token this process knows still works (an office behind one address is
not locked out by one bad client), and anything that would need the database
is refused with 4008 before any database work.

One fixed window per address in shared state: reading it is one GET per
sign-in, counting a failure one round trip. If Redis cannot answer, the
budget is not enforced: the watchdog refuses connects while Redis is down.
"""

import time

from django.conf import settings

from stocktracker.lib.state import StateUnavailable, get_state

WINDOW_S = 60


def _key(ip):
    return f"authfail:{ip}:{int(time.time() // WINDOW_S)}"


async def over_budget(ip) -> bool:
    """True once `ip` has failed WS_AUTH_FAILURES_PER_MINUTE sign-ins this minute."""
    try:
        return await get_state().counter_get(_key(ip)) >= settings.WS_AUTH_FAILURES_PER_MINUTE
    except StateUnavailable:
        return False


async def failed(ip) -> None:
    """Count one failed sign-in from `ip`."""
    try:
        await get_state().counter_incr(_key(ip), WINDOW_S * 2)
    except StateUnavailable:
        pass
