"""Token checks for the streams: the only API the socket side uses.

`check_token` runs on every connect; `recheck_token` on every live-effect
message and periodic re-check. Both return a `TokenCheck`: a grant, or the
reason the token may not be used ('bad', 'revoked', 'retired', 'expired',
'stream'). Accounts knows nothing of sockets; streams maps reasons to codes.

Both are answered from one per-process cache, so that neither a reconnect
storm nor thousands of open sockets re-checking become a query storm:

- A malformed token (wrong shape or checksum) is refused with no I/O at all.
- Each process keeps what it loaded, keyed by lookup prefix, together with
  the token's *generation*: an opaque value in shared state (Redis in
  production, this process in embedded mode) that every committed change
  replaces (`apps.accounts.signals`). A cached copy is used only while the
  generation it was loaded under is still the current one, so a change is
  seen by the very next check or re-check on every process once its
  generation is bumped. A missing generation (first use, Redis flushed or
  restarted) means: load from the database.
- A token whose bump this process could not deliver yet (Redis blip at commit
  time, `signals.pending_bumps`) is never answered from this cache; see
  `apps.accounts.signals` for the exact window left on other processes.
- Time-based rules (expiry, end of a rotation grace) are evaluated on every
  use from the cached timestamps, so they hold to the second.
- If shared state cannot be reached the check falls back to the database.
- If the database cannot answer (down, hung, past DATABASE_CONNECT_TIMEOUT /
  DATABASE_STATEMENT_TIMEOUT, or the process's database thread stuck on an
  earlier call for STALLED_AFTER) a check raises `AccountsUnavailable`
  ("retry later"), except where the cache still knows enough: a copy whose
  generation is unchanged is used past TOKEN_CACHE_TTL (no change went
  through accounts, and none can commit while the database is down), and a
  known expiry or end of rotation grace refuses the token on time.
- A cached copy is dropped after TOKEN_CACHE_TTL whatever its generation: a
  change made behind accounts' back (SQL console, queryset `.update()` of a
  watched field) reaches new connects within TOKEN_CACHE_TTL and open
  sockets within TOKEN_CACHE_TTL + TOKEN_RECHECK_INTERVAL.
- last_used (time, IP) is written at most once a minute per token: a
  per-process timer, a shared claim, then a conditional UPDATE.
"""

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from stocktracker.lib import dbthread, keys
from stocktracker.lib.dbthread import database_call

from . import known, tokens
from .signals import GENERATION_TTL, pending_bumps

log = logging.getLogger("apps.accounts")


@dataclass(frozen=True)
class TokenCheck:
    reason: str | None = None  # None: allowed
    token_id: int | None = None
    token_prefix: str | None = None
    user_id: int | None = None
    username: str | None = None
    token_max_connections: int | None = None
    user_max_connections: int | None = None
    # When the token stops working by itself (None: not by time). Lets the
    # socket side schedule a close at the exact moment.
    expires_at: datetime | None = None
    retires_at: datetime | None = None
    streams: tuple[str, ...] = ()

    @property
    def ok(self):
        return self.reason is None


BAD = TokenCheck(reason="bad")


class AccountsUnavailable(Exception):
    """The database cannot answer a token or session check now (down, hung,
    timed out): the caller should say "retry later", not "refused"."""


def _database_wait():
    # A hung server may swallow a connect attempt to each listed host, then a statement.
    return settings.DATABASE_CONNECT_TIMEOUT * settings.DATABASE_HOSTS + (settings.DATABASE_STATEMENT_TIMEOUT or 30) + 1


# An accounts query takes milliseconds. A database thread that has waited this
# long on one step of a call (a connect, a query) is stuck: the database hung
# or vanished mid-call. Calls queued behind it would each wait out their whole
# budget, so they answer "retry later" instead, and so do new ones.
STALLED_AFTER = 2.0
_STALL_POLL = 0.25

# Monotonic time before which the database is not asked again after a failure:
# database calls share one thread per process, so a hung database would
# otherwise make every later check queue behind the stalled one.
_database_down_until = 0.0


async def _from_database(call, *args, **kwargs):
    """`await call(...)` (a `dbthread.database_call` function), with database
    failures and stalls turned into AccountsUnavailable."""
    global _database_down_until
    if time.monotonic() < _database_down_until:
        raise AccountsUnavailable("database failed moments ago")
    if dbthread.stalled_for() > STALLED_AFTER:
        raise AccountsUnavailable("database thread stalled")
    me = object()
    token = dbthread.caller.set(me)
    try:
        task = asyncio.ensure_future(call(*args, **kwargs))
    finally:
        dbthread.caller.reset(token)
    deadline = time.monotonic() + _database_wait()
    try:
        while not task.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer in {_database_wait()} s")
            await asyncio.wait({task}, timeout=min(_STALL_POLL, left))
            if not task.done() and dbthread.stalled_for(other_than=me) > STALLED_AFTER:
                raise AccountsUnavailable("queued behind a stalled database call")
        return task.result()
    except (DatabaseError, TimeoutError) as exc:
        _database_down_until = time.monotonic() + settings.DATABASE_CONNECT_TIMEOUT
        log.warning("accounts database unavailable: %s", f"{type(exc).__name__}: {exc}".strip()[:200])
        raise AccountsUnavailable(type(exc).__name__) from exc
    finally:
        task.cancel()  # a call still queued never runs; one the thread is on finishes there


@dataclass(frozen=True)
class _Snapshot:
    """What a check needs to know about one token, as loaded from the database."""

    token_id: int
    prefix: str
    digest: str
    user_id: int
    username: str
    user_active: bool
    revoked_at: datetime | None
    retires_at: datetime | None
    expires_at: datetime | None
    streams: tuple[str, ...]
    token_max_connections: int
    user_max_connections: int

    @classmethod
    def of(cls, token):
        from .models import UserLimits

        try:
            user_max = token.user.limits.max_connections
        except UserLimits.DoesNotExist:
            user_max = settings.USER_DEFAULT_MAX_CONNECTIONS
        return cls(
            token_id=token.pk,
            prefix=token.prefix,
            digest=token.digest,
            user_id=token.user_id,
            username=token.user.get_username(),
            user_active=token.user.is_active,
            revoked_at=token.revoked_at,
            retires_at=token.retires_at,
            expires_at=token.expires_at,
            streams=tuple(token.streams),
            token_max_connections=token.max_connections,
            user_max_connections=user_max,
        )

    def check(self, stream, at=None):
        from .models import token_rejection

        reason = token_rejection(
            revoked_at=self.revoked_at,
            user_active=self.user_active,
            retires_at=self.retires_at,
            expires_at=self.expires_at,
            streams=self.streams,
            stream=stream,
            at=at,
        )
        return TokenCheck(
            reason=reason,
            token_id=self.token_id,
            token_prefix=self.prefix,
            user_id=self.user_id,
            username=self.username,
            token_max_connections=self.token_max_connections,
            user_max_connections=self.user_max_connections,
            expires_at=self.expires_at,
            retires_at=self.retires_at,
            streams=self.streams,
        )


def _load_snapshot(**lookup):
    """One query: the token, its owner and the owner's limits."""
    from .models import ApiToken

    token = ApiToken.objects.select_related("user", "user__limits").filter(**lookup).first()
    return _Snapshot.of(token) if token is not None else None


_load_snapshot_async = database_call(_load_snapshot)


@database_call
def _touch(token_id, ip, at):
    from .models import ApiToken

    return ApiToken.touch(token_id, ip, at)


class _NeedsDatabase(Exception):
    """A cache-only check (`load=False`) cannot be answered without the database."""


class TokenCache:
    """One process's token cache (module-level `token_cache`; tests make more
    to stand for other processes). Entries: prefix -> (snapshot, generation,
    monotonic time loaded). "No such token" answers (snapshot None) live in
    their own, smaller LRU: a flood of forged tokens evicts only other
    forgeries, never a real token's copy."""

    def __init__(self, ttl=None, max_entries=10_000, max_unknown=1_000):
        self.ttl = settings.TOKEN_CACHE_TTL if ttl is None else ttl
        self.max_entries = max_entries
        self.max_unknown = max_unknown
        self._entries = OrderedDict()
        self._unknown = OrderedDict()
        self._prefixes = OrderedDict()  # token_id -> lookup prefix (never changes), for re-checks
        self._touched = {}  # token_id -> monotonic time of this process's last last_used attempt
        self._loading = {}  # (loop, prefix, generation) -> the load in flight
        self._touching = set()  # background last_used writes (kept referenced until done)

    def clear(self):
        self._entries.clear()
        self._unknown.clear()
        self._prefixes.clear()
        self._touched.clear()

    async def check(self, raw, stream, ip=None, at=None, load=True) -> TokenCheck | None:
        """`at`: evaluate expiry and rotation grace at this time (tests); default now.
        `load=False`: answer from this cache only; None when that needs the database."""
        if not tokens.is_well_formed(raw):
            return BAD
        try:
            snapshot = await self._snapshot(tokens.lookup_prefix(raw), load)
        except _NeedsDatabase:
            return None
        if snapshot is None or not hmac.compare_digest(snapshot.digest, tokens.digest(raw)):
            return BAD
        result = snapshot.check(stream, at)
        if result.ok:
            await self._record_use(snapshot.token_id, ip)
        return result

    async def recheck(self, token_id, stream, at=None) -> TokenCheck:
        """The check of an open socket's token, by id. A token this process
        has not loaded yet is read by id (which teaches the cache its prefix);
        after that, re-checks are answered like connects. No last_used write."""
        prefix = self._prefixes.get(token_id)
        if prefix is None:
            snapshot = await self._load(pk=token_id)
        else:
            snapshot = await self._snapshot(prefix)
            if snapshot is not None and snapshot.token_id != token_id:
                snapshot = None  # the prefix now belongs to another token: this one is gone
        if snapshot is None:
            return TokenCheck(reason="revoked", token_id=token_id)
        return snapshot.check(stream, at)

    async def recheck_or_known(self, token_id, stream, at=None) -> TokenCheck:
        """`recheck`, except that a known expiry or end of rotation grace
        refuses the token on time without waiting on the database: at once
        while the copy's generation is current, or when the database fails."""
        known = self._known_end(token_id, stream, at)
        if known is not None:
            from stocktracker.lib.state import StateUnavailable, get_state

            entry = self._entries.get(known.token_prefix)
            try:
                if await get_state().generation_get(keys.token_generation(known.token_prefix)) == entry[1]:
                    return known  # no change since the copy was loaded
            except StateUnavailable:
                pass
        try:
            return await self.recheck(token_id, stream, at)
        except AccountsUnavailable:
            if known is not None:
                return known
            raise

    def _known_end(self, token_id, stream, at):
        """The cached copy's verdict if it ended by time (expired, retired), else None."""
        entry = self._entries.get(self._prefixes.get(token_id))
        if entry is None or entry[0] is None or entry[0].token_id != token_id:
            return None
        verdict = entry[0].check(stream, at)
        return verdict if verdict.reason in ("expired", "retired") else None

    async def _load(self, allowed=True, **lookup):
        if not allowed:
            raise _NeedsDatabase
        snapshot = await _from_database(_load_snapshot_async, **lookup)
        if snapshot is not None and snapshot.token_id not in self._prefixes:
            self._prefixes[snapshot.token_id] = snapshot.prefix
            while len(self._prefixes) > self.max_entries:
                self._prefixes.popitem(last=False)
            await known.learn_token(snapshot.prefix)
        return snapshot

    async def _snapshot(self, prefix, load=True):
        from stocktracker.lib.state import StateUnavailable, get_state

        state = get_state()
        key = keys.token_generation(prefix)
        try:
            generation = await state.generation_get(key)
        except StateUnavailable:
            # Cannot tell whether a cached copy is current: ask the database.
            return await self._load(prefix=prefix, allowed=load)
        if prefix in pending_bumps:
            # This process changed the token but could not give it a new
            # generation yet: other copies may be stale, ours too. Ask the database.
            self._forget(prefix)
            return await self._load(prefix=prefix, allowed=load)
        entry = self._entries.get(prefix) or self._unknown.get(prefix)
        if entry is not None:
            snapshot, cached_generation, loaded = entry
            fresh = time.monotonic() - loaded < self.ttl
            # A token copy is trusted only under a real generation; "no such
            # token" also while no generation exists (none was ever issued).
            # Never past TOKEN_CACHE_TTL, cache-only checks included: a change
            # that missed its announcement must reach every check by then.
            if fresh and cached_generation == generation and (generation is not None or snapshot is None):
                (self._entries if snapshot is not None else self._unknown).move_to_end(prefix)
                return snapshot
        # The generation was read before the load: a change committed during
        # the load has replaced it, so the next check reloads. Concurrent
        # misses under one generation (a connect storm) share one query.
        try:
            snapshot, generation = await self._shared_load(prefix, generation, allowed=load)
        except AccountsUnavailable:
            if entry is not None and entry[1] == generation and generation is not None:
                return entry[0]  # unchanged since loaded, only older than TOKEN_CACHE_TTL
            raise
        self._forget(prefix)
        if snapshot is not None and generation is None:
            return snapshot  # first use, and the generation could not be created: cache nothing
        self._remember(prefix, snapshot, generation)
        return snapshot

    def _remember(self, prefix, snapshot, generation):
        known = snapshot is not None
        entries, bound = (self._entries, self.max_entries) if known else (self._unknown, self.max_unknown)
        entries.pop(prefix, None)
        entries[prefix] = (snapshot, generation, time.monotonic())
        while len(entries) > bound:
            entries.popitem(last=False)

    async def _shared_load(self, prefix, generation, allowed=True):
        """(snapshot, the generation to cache it under); one load per
        (prefix, generation) in flight, whoever asks."""
        loop = asyncio.get_running_loop()
        first_use = self._loading.get((loop, prefix, None, allowed))
        if generation is not None and first_use is not None:
            # A first-use load is in flight and this check read a generation
            # created meanwhile, by that load if it is the one it returns: its
            # copy is current under it (a storm of one new token: one query).
            try:
                snapshot, created = await asyncio.shield(first_use)
            except AccountsUnavailable:
                pass
            else:
                if created == generation:
                    return snapshot, created
        slot = (loop, prefix, generation, allowed)
        task = self._loading.get(slot)
        if task is None:
            task = self._loading[slot] = loop.create_task(self._load_under(prefix, generation, allowed))
            task.add_done_callback(lambda _t: self._loading.pop(slot, None))
        return await asyncio.shield(task)

    async def _load_under(self, prefix, generation, allowed):
        from stocktracker.lib.state import StateUnavailable, get_state

        snapshot = await self._load(prefix=prefix, allowed=allowed)
        if snapshot is not None and generation is None:
            # First use since the key expired or Redis restarted: create the
            # generation now. Created by us, it proves that no change was
            # announced since the generation was read as missing (before the
            # load), and any later one replaces it: the copy may be cached
            # under it. Found already there: a change may have raced the
            # load, so the copy is not cached (the next check loads again).
            try:
                generation = await get_state().generation_init(keys.token_generation(prefix), GENERATION_TTL)
            except StateUnavailable:
                generation = None
            if generation is not None:
                # Cached before this load counts as done: a check that reads the
                # new generation after this finds the copy, not a second query.
                self._remember(prefix, snapshot, generation)
        return snapshot, generation

    def _forget(self, prefix):
        self._entries.pop(prefix, None)
        self._unknown.pop(prefix, None)

    async def _record_use(self, token_id, ip):
        from stocktracker.lib.state import StateUnavailable, get_state

        from .models import LAST_USED_INTERVAL

        interval = LAST_USED_INTERVAL.total_seconds()
        now = time.monotonic()
        last = self._touched.get(token_id)
        if last is not None and now - last < interval:
            return  # this process recorded (or tried to) within the minute
        self._touched[token_id] = now
        try:
            if not await get_state().claim(keys.last_used_claim(token_id), interval):
                return  # another process recorded a use within the minute
        except StateUnavailable:
            pass  # the conditional UPDATE alone still keeps it to once a minute
        # In the background: a slow or hung database must not hold up a connect.
        task = asyncio.ensure_future(self._touch(token_id, ip, timezone.now()))
        self._touching.add(task)
        task.add_done_callback(self._touching.discard)

    async def settle(self):
        """Wait for this event loop's background last_used writes (tests, shutdown)."""
        loop = asyncio.get_running_loop()
        pending = [task for task in self._touching if task.get_loop() is loop]
        await asyncio.gather(*pending, return_exceptions=True)

    async def _touch(self, token_id, ip, at):
        try:
            await _from_database(_touch, token_id, ip, at)
        except Exception:
            log.warning("could not record last use of token %s", token_id, exc_info=True)


token_cache = TokenCache()


async def check_token(raw, stream, ip=None, load=True) -> TokenCheck | None:
    """Is `raw` a usable token for `stream`? Called on every connect.
    `load=False`: None unless this process can answer without the
    database, from a copy younger than TOKEN_CACHE_TTL."""
    return await token_cache.check(raw, stream, ip, load=load)


async def recheck_token(token_id, stream) -> TokenCheck:
    """Is the token of an open socket still usable for `stream`? Called on
    every live-effect message and periodic re-check.

    Answered from the generation-checked cache, like `check_token`: the
    database is read only when the token's generation changed, is missing or
    cannot be read, when this process's own bump is pending, when the cached
    copy is older than TOKEN_CACHE_TTL, or on the first re-check of a token
    this process has not loaded yet. So a change that has been committed and
    had its generation bumped is always seen; expiry and rotation grace are
    evaluated now. A deleted token answers 'revoked'."""
    return await token_cache.recheck_or_known(token_id, stream)


async def session_user_check(user_id):
    """(active, max_connections) for the user of a session socket, in one
    query; (False, None) when the user no longer exists. Used at connect and
    on every re-check, so a deactivated or deleted user's sockets close.
    Raises AccountsUnavailable when the database cannot answer."""
    return await _from_database(_session_user_check, user_id)


@database_call
def _session_user_check(user_id):
    from django.contrib.auth import get_user_model

    from .models import UserLimits

    user = get_user_model().objects.select_related("limits").filter(pk=user_id).first()
    if user is None:
        return False, None
    try:
        user_max = user.limits.max_connections
    except UserLimits.DoesNotExist:
        user_max = settings.USER_DEFAULT_MAX_CONNECTIONS
    return user.is_active, user_max
