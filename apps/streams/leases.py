"""Connection limits as Redis leases: one per socket in every set it counts in
(per IP, token, user, and the stream's subscriber set).

Taking them is one script call (`state.lease_acquire`), so exactly N sockets
are admitted under any number of parallel connects on any number of
processes. Each lease expires WS_LEASE_TTL after its last renewal; the
process renews all of its sockets' leases in one call per interval
(`apps.streams.sessions.Registry`), so a killed process's slots free
themselves within the TTL.
"""

import asyncio

from django.conf import settings

from stocktracker.lib.state import StateUnavailable, get_state

from . import protocol

RELEASE_TIMEOUT = 1.0


def limits_for(ip, stream, grant):
    """[(lease set, cap or None)] for a socket; the index of a failed one names it.

    The per-IP cap is for token traffic: a session (dashboard) socket counts
    against its user's cap and its session's, so twenty staff behind one
    office address can each keep the dashboard open."""
    limits = [(protocol.subscriber_key(stream), None)]
    if grant.token_id is not None:
        limits.insert(0, (f"ip:{ip}", settings.WS_MAX_CONNECTIONS_PER_IP))
        limits.append((f"token:{grant.token_id}", grant.token_max))
    elif grant.session is not None:
        limits.append((f"session:{grant.session}", settings.WS_MAX_CONNECTIONS_PER_SESSION))
    else:  # a session socket whose session has no key: nothing narrower than the address to count by
        limits.insert(0, (f"ip:{ip}", settings.WS_MAX_CONNECTIONS_PER_IP))
    limits.append((f"user:{grant.user_id}", grant.user_max))
    return limits


async def acquire(conn_id, limits):
    """None when every lease was taken, else the name of the full set ("ip",
    "token", "user"). Raises StateUnavailable."""
    failed = await get_state().lease_acquire(conn_id, limits, settings.WS_LEASE_TTL)
    if failed:
        return limits[failed - 1][0].split(":", 1)[0]
    return None


async def release(conn_id, keys):
    """Best effort: what Redis does not take back expires on its own."""
    try:
        await asyncio.wait_for(get_state().lease_release(conn_id, keys), RELEASE_TIMEOUT)
    except (StateUnavailable, OSError, TimeoutError):
        pass


async def over_cap(grant):
    """Connection ids past a lowered cap of this grant's token or user, newest
    first to go: ids sort by connect time, so every process agrees on which
    sockets are over without talking to the others. One count per cap; the
    members are fetched only when over."""
    caps = [(f"user:{grant.user_id}", grant.user_max)]
    if grant.token_id is not None:
        caps.insert(0, (f"token:{grant.token_id}", grant.token_max))
    state = get_state()
    over = {}
    for key, cap in caps:
        if cap is None:
            continue
        try:
            if await state.lease_count(key) <= cap:
                continue
            members = await state.lease_members(key)
        except StateUnavailable:
            continue
        for conn_id in members[cap:]:
            over.setdefault(conn_id, key.split(":")[0])
    return over
