"""The garbage collector's plan for a process holding thousands of sockets.

A full collection walks every object of every open socket and, while
sockets keep arriving, runs every few seconds: each one stalls the event
loop. Survivors of a full collection are long-lived, so they are frozen
(left out of later collections) at the next turn of the loop (`apply()`,
called by the admission's lag probe). A frozen object is still freed by
refcounting, but not when it sits in a reference cycle: a closed socket's
cycle is broken when daphne forgets it (`port._forget`); whatever other
cycles were frozen go at the next thaw, every THAW_EVERY seconds (one
full-length collection per THAW_EVERY). Long collections are logged.
"""

import gc
import logging
import time

log = logging.getLogger("apps.streams")

THAW_EVERY = 600.0  # seconds between thaws
LOG_OVER = 0.25  # a full collection this long (seconds) is logged

_plan = {"started": None, "next": None, "thawed": 0.0}


def watch():
    """Start watching full collections (once per process)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)
        _plan["thawed"] = time.monotonic()


def _on_gc(phase, info):
    if info.get("generation") != 2:
        return
    now = time.monotonic()
    if phase == "start":
        _plan["started"] = now
        return
    took = now - (_plan["started"] or now)
    if took > LOG_OVER:
        log.warning("full garbage collection took %.2f s (%d objects collected)", took, info.get("collected", 0))
    if now - _plan["thawed"] >= THAW_EVERY:
        _plan["thawed"] = now
        _plan["next"] = "thaw"
    else:
        _plan["next"] = "freeze"


def apply():
    """Freeze or thaw as the last full collection planned (outside the collector's callback)."""
    step, _plan["next"] = _plan["next"], None
    if step == "freeze":
        gc.freeze()
    elif step == "thaw":
        gc.unfreeze()
