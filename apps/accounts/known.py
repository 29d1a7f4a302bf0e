"""Credentials known to be real: the lookup prefixes of tokens that exist
(not secret: shown in the admin and in logs), and the names of browser
sessions that signed someone in (`keys.session_name`, never the key).

The socket side asks before it spends a failed sign-in budget: a known
credential is always checked, whatever others at its address did, and only
the rest counts against the budget. Knowing too much costs little (a forged
token behind a known prefix is refused by the token cache, which reads the
database for that prefix at most once per TOKEN_CACHE_TTL); knowing too
little only means the budget applies.

Kept in shared state (a set per kind; a session runs out at its expiry) and,
for what this process has seen, in memory: that copy answers first, and is
all there is while Redis is down. A token's prefix is added when it is
issued and whenever a check loads it from the database. Redis restarted or
flushed: the first check that finds the set incomplete has one process
rebuild it from the database (one query) in the background.
"""

import asyncio
import logging
import math
import time
from collections import OrderedDict

from asgiref.sync import async_to_sync
from django.db import transaction

from stocktracker.lib import keys
from stocktracker.lib.dbthread import database_call

log = logging.getLogger("apps.accounts")

MEMORY_BOUND = 100_000  # members of each kind this process remembers
COMPLETE_TTL = 24 * 3600  # a rebuilt set is trusted complete this long, then rebuilt
REBUILD_CLAIM = 60.0  # at most one rebuild per this many seconds, on any process

_local = {keys.KNOWN_TOKENS: OrderedDict(), keys.KNOWN_SESSIONS: OrderedDict()}  # member -> epoch seconds it ends
_rebuilds = {}  # event loop -> its rebuild task (kept referenced)


def _remember(kind, member, until):
    table = _local[kind]
    table[member] = max(math.inf if until is None else until, table.get(member, -math.inf))
    table.move_to_end(member)
    while len(table) > MEMORY_BOUND:
        table.popitem(last=False)


def _remembered(kind, member):
    until = _local[kind].get(member)
    return until is not None and until > time.time()


async def _has(kind, member):
    from stocktracker.lib.state import StateUnavailable, get_state

    if _remembered(kind, member):
        return True
    state = get_state()
    try:
        until = await state.known_until(kind, member)
        if until is not None:
            _remember(kind, member, until)
            return True
        if kind == keys.KNOWN_TOKENS and await state.generation_get(keys.known_complete(kind)) is None:
            _rebuild_soon()
    except StateUnavailable:
        pass
    return False


async def _add(kind, members):
    from stocktracker.lib.state import StateUnavailable, get_state

    for member, until in members.items():
        _remember(kind, member, until)
    try:
        await get_state().known_add(kind, members)
    except StateUnavailable:
        pass  # this process knows; a later load or the rebuild tells the others


async def token_known(prefix) -> bool:
    """Is `prefix` the lookup prefix of a token that exists (or did lately)?"""
    return await _has(keys.KNOWN_TOKENS, prefix)


async def learn_token(prefix):
    if not _remembered(keys.KNOWN_TOKENS, prefix):
        await _add(keys.KNOWN_TOKENS, {prefix: None})


def learn_token_on_commit(prefix):
    """For model code: know `prefix` once the transaction that issued it commits."""

    def learn():
        try:
            async_to_sync(learn_token)(prefix)
        except Exception:  # a commit callback must not raise; a later load learns it
            log.warning("could not record the prefix of new token %s", prefix, exc_info=True)

    transaction.on_commit(learn)


async def session_known(name) -> bool:
    """Has the session named `name` signed someone in (and not expired since)?"""
    return await _has(keys.KNOWN_SESSIONS, name)


async def learn_session(name, expires_at):
    """`expires_at`: a datetime, or None (the session's end is not known: an hour)."""
    until = expires_at.timestamp() if expires_at is not None else time.time() + 3600
    if _local[keys.KNOWN_SESSIONS].get(name, -math.inf) < until:  # every dashboard connect: write only news
        await _add(keys.KNOWN_SESSIONS, {name: until})


def forget_local():
    """Forget what this process remembers (tests)."""
    for table in _local.values():
        table.clear()


# --- rebuilding the token set after Redis lost it -----------------------------------


def _rebuild_soon():
    loop = asyncio.get_running_loop()
    running = _rebuilds.get(loop)
    if running is None or running.done():
        for old in [other for other, task in _rebuilds.items() if task.done()]:
            del _rebuilds[old]
        _rebuilds[loop] = loop.create_task(rebuild_tokens())


@database_call
def _live_prefixes():
    from .models import ApiToken

    return list(ApiToken.objects.filter(revoked_at__isnull=True).values_list("prefix", flat=True))


async def rebuild_tokens():
    """Fill the shared set with every live token's prefix, then mark it
    complete (one process at a time). Issued meanwhile: added by its own
    commit, so nothing is lost between the query and the marker."""
    from stocktracker.lib.state import StateUnavailable, get_state

    from .auth import AccountsUnavailable, _from_database

    state = get_state()
    try:
        if not await state.claim(keys.known_rebuild(keys.KNOWN_TOKENS), REBUILD_CLAIM):
            return
        prefixes = await _from_database(_live_prefixes)
        for start in range(0, len(prefixes), 1000):
            await state.known_add(keys.KNOWN_TOKENS, dict.fromkeys(prefixes[start : start + 1000]))
        await state.generation_bump([keys.known_complete(keys.KNOWN_TOKENS)], COMPLETE_TTL)
    except (StateUnavailable, AccountsUnavailable) as exc:
        log.warning("could not rebuild the set of token prefixes: %s", exc)
        return
    log.info("rebuilt the set of token prefixes (%d live tokens)", len(prefixes))
