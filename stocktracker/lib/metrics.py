"""Prometheus metrics across processes.

With PROMETHEUS_MULTIPROC_DIR set (before start-up), every process (each
daphne, each runworker on the machine) writes its values to memory-mapped
files in that directory, and `exposition()`, served by any one process, adds
them all up (prometheus_client's multiprocess mode). Scrape every web
machine; run the workers on machines whose web processes share their
directory, or their feed metrics have nobody to serve them. Without it
(embedded mode, one process) the default in-process registry is used.

Each app declares its own metrics (`apps/streams/metrics.py`,
`apps/feed/metrics.py`); this module only knows how they are collected.
"""

import atexit
import glob
import os

from prometheus_client import REGISTRY as _DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)  # before the first metric opens its file


def exposition():
    """The metrics of every process on this machine (multiprocess mode) or of this one."""
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(_DEFAULT_REGISTRY)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _setup_multiprocess():
    # Live gauges of processes that died without cleaning up (kill -9, OOM)
    # would count forever: drop them when the next process starts.
    for path in glob.glob(os.path.join(MULTIPROC_DIR, "gauge_live*_*.db")):
        try:
            pid = int(os.path.basename(path).rsplit("_", 1)[1].split(".")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            multiprocess.mark_process_dead(pid, MULTIPROC_DIR)
    # On a clean exit this process's live gauges (open sockets, leader) stop counting.
    atexit.register(multiprocess.mark_process_dead, os.getpid(), MULTIPROC_DIR)


if MULTIPROC_DIR:
    _setup_multiprocess()
