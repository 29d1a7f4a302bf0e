"""Which worker publishes: the one holding the feed's leader lock.

A standby retries the lock every second, so it takes over within
FEED_LEADER_TTL + 1 s of a leader's death, at once after a clean stop. Each
term's lock token fences what the leader writes (`fence()`): a leader paused
past the TTL finds its writes refused. Embedded mode has one process and is
always the leader.
"""

import logging
import math
import time

from django.conf import settings

from stocktracker.lib import keys
from stocktracker.lib.locks import get_lock

from . import metrics

log = logging.getLogger("apps.feed")

LOCK_KEY = keys.FEED_LEADER
RENEW_AT_MOST_EVERY_S = 5.0


class Leadership:
    """The leader lock; always held in embedded mode or when not electing."""

    def __init__(self, elect):
        self.elect = elect
        self.lock = None
        self.held = False
        self.terms = 0  # times this process took the lock
        self.renewed = -math.inf  # monotonic time the lock was last taken or renewed

    def renew_every(self):
        return min(settings.FEED_LEADER_TTL / 3, RENEW_AT_MOST_EVERY_S)

    def _lock(self):
        if self.lock is None:
            self.lock = get_lock(LOCK_KEY, settings.FEED_LEADER_TTL)
        return self.lock

    async def ensure(self, renew=True):
        """Hold (or renew) the lock if possible; True while this process leads.

        `renew=False` (a cycle) trusts a lock renewed less than `renew_every()`
        ago, which leaves it at least two thirds of its TTL: the runner's keeper
        renews it, and `still_held()` checks it before each publish anyway."""
        lock = self._lock()
        if not self.elect or not lock.shared:
            self.terms += not self.held
            self.held = True
            metrics.FEED_LEADER.set(1)
            return True
        if self.held and not renew and time.monotonic() - self.renewed < self.renew_every():
            return True
        if self.held:
            if await lock.extend():
                self.renewed = time.monotonic()
                return True
            self.held = False
            metrics.FEED_LEADER.set(0)
            log.warning("lost the feed leader lock")
        self.held = await lock.acquire()
        if self.held:
            self.renewed = time.monotonic()
            self.terms += 1
            log.info("took the feed leader lock")
        metrics.FEED_LEADER.set(1 if self.held else 0)
        return self.held

    async def still_held(self):
        """Checked right before every publish: a leader that lost the lock must not publish."""
        lock = self._lock()
        if not self.elect or not lock.shared:
            return True
        self.held = await lock.owned()
        return self.held

    def fence(self):
        """This term's proof of leadership for the publish step: (lock key,
        token), checked by Redis in the same script that numbers the frame."""
        if self.lock is None or not self.elect:
            return None
        return self.lock.fence()

    def stepped_down(self):
        """Another process took the lock (a write of ours was fenced)."""
        self.held = False
        metrics.FEED_LEADER.set(0)

    async def release(self):
        if self.lock is None or not self.held or not self.lock.shared:
            return
        from redis.exceptions import LockError, RedisError

        self.held = False
        metrics.FEED_LEADER.set(0)
        try:
            await self.lock.release()
            log.info("released the feed leader lock")
        except (LockError, RedisError, OSError):
            log.warning("could not release the feed leader lock; it expires on its own")
