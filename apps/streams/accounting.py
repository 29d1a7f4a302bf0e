"""Per-process counting of what the sockets do, flushed in batches.

Nothing here runs per delivered message: a socket's `Subscriber` counts
what it was sent (two integer additions). The consumer calls this
module once per connect (`opened`), once per refusal (`rejected`) and once
when it goes (`closed`). A task per event loop then, every
METRICS_FOLD_INTERVAL seconds, folds the sockets' new counts into the
Prometheus counters and the pending token usage, and every
USAGE_FLUSH_INTERVAL seconds writes the usage of every token to the database
in one batch (`TokenUsage.objects.record`, F() upserts). A SIGTERM drain
flushes once more before the process exits.

Peak concurrency is global, not per process: a connect raises its token's
peak to this process's count of its sockets at once (no I/O), and every
METRICS_FOLD_INTERVAL the live lease counts (all processes) of the tokens
that gained sockets meanwhile are read in one call.
"""

import asyncio
import logging
import weakref

from django.conf import settings
from django.utils import timezone

from stocktracker.lib import keys
from stocktracker.lib.aio import PerLoop, running
from stocktracker.lib.dbthread import database_call
from stocktracker.lib.state import StateUnavailable, get_state

from . import metrics

log = logging.getLogger("apps.streams")

METRICS_FOLD_INTERVAL = 2.0
FOLD_SLICE = 2000  # sockets folded between yields (a few ms at 10,000 sockets)


class Accounting:
    def __init__(self):
        self.sockets = weakref.WeakSet()  # streaming sockets on this loop
        self.folded = weakref.WeakKeyDictionary()  # socket -> (sent, sent_bytes) already counted
        self.pending = {}  # (token_id, day) -> [connections, peak, messages, bytes, rejections]
        self.live = {}  # token_id -> this process's streaming sockets of it
        self.peaks_due = set()  # tokens that gained a socket since the last global peak read
        self.task = None
        self.lock = asyncio.Lock()

    # --- hooks (one call each) ----------------------------------------------------

    async def opened(self, consumer):
        """The socket started streaming."""
        self.start()
        stream = consumer.stream
        metrics.CONNECTS.labels(stream).inc()
        metrics.CONNECTIONS.labels(stream).inc()
        self.sockets.add(consumer)
        self.folded[consumer] = (0, 0)  # the welcome snapshot counts too
        token_id = consumer.grant.token_id
        if token_id is None:
            return
        row = self._row(token_id)
        row[0] += 1
        live = self.live[token_id] = self.live.get(token_id, 0) + 1
        row[1] = max(row[1], live)
        self.peaks_due.add(token_id)

    def rejected(self, consumer, code):
        """The socket is being closed by the server with `code`."""
        stream = consumer.stream
        grant = getattr(consumer, "grant", None)
        if consumer in self.sockets:
            return  # a streaming socket: counted as a disconnect in `closed`
        metrics.REJECTIONS.labels(stream, str(int(code))).inc()
        token_id = grant.token_id if grant is not None else getattr(consumer, "claimed_token_id", None)
        if token_id is not None:
            self._row(token_id)[4] += 1

    def closed(self, consumer, code=None):
        """The socket is gone (either side closed it)."""
        if consumer not in self.sockets:
            return
        self._fold(consumer)
        self.sockets.discard(consumer)
        token_id = consumer.grant.token_id if consumer.grant is not None else None
        if token_id is not None:
            left = self.live.get(token_id, 1) - 1
            if left > 0:
                self.live[token_id] = left
            else:
                self.live.pop(token_id, None)
        stream = consumer.stream
        metrics.CONNECTIONS.labels(stream).dec()
        close = getattr(consumer, "close_code", None) or code
        metrics.DISCONNECTS.labels(stream, str(close if close is not None else "none")).inc()

    # --- folding and flushing ---------------------------------------------------------

    def _row(self, token_id):
        key = (token_id, timezone.localdate())
        row = self.pending.get(key)
        if row is None:
            row = self.pending[key] = [0, 0, 0, 0, 0]
        return row

    def _fold(self, consumer, streams=None, tokens=None):
        """Move one socket's new counts into `streams` (stream -> [messages,
        bytes]) and `tokens` (token_id -> [messages, bytes]); applied at once
        when those are not given."""
        sent, sent_bytes = consumer.sent, consumer.sent_bytes
        old_sent, old_bytes = self.folded.get(consumer, (0, 0))
        messages, size = sent - old_sent, sent_bytes - old_bytes
        if not messages and not size:
            return
        self.folded[consumer] = (sent, sent_bytes)
        apply = streams is None
        if apply:
            streams, tokens = {}, {}
        counts = streams.setdefault(consumer.stream, [0, 0])
        counts[0] += messages
        counts[1] += size
        token_id = consumer.grant.token_id if consumer.grant is not None else None
        if token_id is not None:
            counts = tokens.setdefault(token_id, [0, 0])
            counts[0] += messages
            counts[1] += size
        if apply:
            self._apply(streams, tokens)

    def _apply(self, streams, tokens):
        # One metrics update per stream and one usage row per token, not per socket.
        for stream, (messages, size) in streams.items():
            metrics.DELIVERED.labels(stream).inc(messages)
            metrics.DELIVERED_BYTES.labels(stream).inc(size)
        for token_id, (messages, size) in tokens.items():
            row = self._row(token_id)
            row[2] += messages
            row[3] += size

    async def fold(self):
        """Move every socket's new counts into the metrics and pending usage,
        yielding to the event loop every FOLD_SLICE sockets so that a fan-out
        never waits for more than one slice. A socket that closes meanwhile
        folds itself (`closed`); nothing is counted twice."""
        streams, tokens = {}, {}
        sockets = list(self.sockets)
        for start in range(0, len(sockets), FOLD_SLICE):
            if start:
                await asyncio.sleep(0)
            for consumer in sockets[start : start + FOLD_SLICE]:
                self._fold(consumer, streams, tokens)
        self._apply(streams, tokens)
        metrics.fanout.settle()

    async def read_peaks(self):
        """Raise the peaks of the tokens that gained sockets to their live
        lease counts on every process (one round trip)."""
        if not self.peaks_due:
            return
        due, self.peaks_due = list(self.peaks_due), set()
        try:
            counts = await get_state().lease_counts([keys.token(token_id) for token_id in due])
        except StateUnavailable:
            return  # this process's own counts stand
        for token_id, count in zip(due, counts, strict=True):
            row = self._row(token_id)
            row[1] = max(row[1], count)

    async def flush(self):
        """Fold, then write the pending usage to the database (one batch)."""
        async with self.lock:
            await self.read_peaks()
            await self.fold()
            if not self.pending:
                return 0
            batch, self.pending = self.pending, {}
            rows = [
                {
                    "token_id": token_id,
                    "day": day,
                    "connections": counts[0],
                    "peak": counts[1],
                    "messages": counts[2],
                    "bytes": counts[3],
                    "rejections": counts[4],
                }
                for (token_id, day), counts in batch.items()
            ]
            try:
                written = await _record(rows)
            except Exception:
                # Keep the counts for the next attempt rather than lose a day's usage.
                for key, counts in batch.items():
                    row = self.pending.setdefault(key, [0, 0, 0, 0, 0])
                    row[0] += counts[0]
                    row[1] = max(row[1], counts[1])
                    for i in (2, 3, 4):
                        row[i] += counts[i]
                metrics.USAGE_FLUSHES.labels("failed").inc()
                log.warning("token usage flush failed; will retry", exc_info=True)
                return 0
            metrics.USAGE_FLUSHES.labels("ok").inc()
            return written

    def start(self):
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        since_flush = 0.0
        while running():
            await asyncio.sleep(METRICS_FOLD_INTERVAL)
            since_flush += METRICS_FOLD_INTERVAL
            if since_flush >= settings.USAGE_FLUSH_INTERVAL:
                since_flush = 0.0
                await self.flush()
            else:
                await self.read_peaks()
                await self.fold()


@database_call
def _record(rows):
    from apps.accounts.models import TokenUsage

    return TokenUsage.objects.record(rows)


_accountings = PerLoop(Accounting)


def accounting() -> Accounting:
    """The accounting of this event loop (one per daphne process)."""
    return _accountings.get()
