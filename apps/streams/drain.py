"""SIGTERM under daphne: say "reconnect now" to every socket before going.

daphne's own shutdown cancels applications, but a connection it has not
reaped yet makes that fail with a KeyError (daphne 4.2.3,
`kill_all_applications`), and the reactor then drops every socket with no
close frame. So the first socket installs a SIGTERM handler that, in this
order: marks the process draining (`/readyz` answers 503 and new sockets are
refused with 4200 from that instant), closes every socket with 4200 at a
random moment within WS_DRAIN_SECONDS (so its clients do not all come back
in the same instant) and gives its leases back, flushes the token usage
counts, then hands over to daphne's handler.
"""

import asyncio
import logging
import random
import signal
import threading

from django.conf import settings

log = logging.getLogger("apps.streams")

CLOSE_TIMEOUT = 2.0  # seconds the drain waits, after the spread, for sockets to close
FLUSH_TIMEOUT = 5.0  # seconds for the last usage flush

_installed = False
_draining = False


def draining():
    """True from SIGTERM on: not ready, no new sockets."""
    return _draining


def install(open_sockets):
    """Once per process, from the server's event loop (main thread).
    `open_sockets()`: the consumers to close when SIGTERM comes."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        global _draining
        _draining = True  # first of all: /readyz says 503 from now on
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM stops at once
        loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(_drain_then(list(open_sockets()), previous, signum, frame))
        )

    signal.signal(signal.SIGTERM, on_sigterm)


async def _close_at(consumer, delay):
    await asyncio.sleep(delay)
    await consumer.shutdown()


async def _drain_then(consumers, previous, signum, frame):
    from .accounting import accounting

    spread = settings.WS_DRAIN_SECONDS
    log.warning("SIGTERM: draining; closing %d sockets with 4200 over %.1f s", len(consumers), spread)
    try:
        if consumers:
            await asyncio.wait_for(
                asyncio.gather(*(_close_at(c, random.uniform(0, spread)) for c in consumers), return_exceptions=True),
                spread + CLOSE_TIMEOUT,
            )
    except TimeoutError:
        log.warning("SIGTERM: sockets still closing after %.0f s; stopping anyway", spread + CLOSE_TIMEOUT)
    try:
        await asyncio.wait_for(accounting().flush(), FLUSH_TIMEOUT)
    except Exception:
        log.warning("SIGTERM: the last token usage flush failed", exc_info=True)
    finally:
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(0)
