"""Whether the database thread is stuck, and on whose call.

Channels runs a process's `database_sync_to_async` calls in one thread, one
at a time. When the database stops answering in the middle of one, that call
holds the thread until its connection fails, and every later call queues
behind it. Calls made through `database_call` note each step they make (the
call starting, each query starting and ending), so that a caller can see the
thread has been stuck on someone else's call and answer "retry later" at once
instead of joining the queue. A call busy with many quick queries (a batch of
writes) is making progress, not stuck.
"""

import functools
import threading
import time
from contextvars import ContextVar

from channels.db import database_sync_to_async
from django.db import connection

# Set by a caller around the creation of its call's task: the task's context,
# and so the thread running the call, carries it.
caller: ContextVar[object | None] = ContextVar("database_caller", default=None)

_steps: dict[int, tuple[float, object | None]] = {}  # thread id -> (monotonic time of its last step, caller)
_NOBODY = object()


def database_call(func):
    """`database_sync_to_async(func)`, noting its steps while it runs."""

    @functools.wraps(func)
    def noted(*args, **kwargs):
        thread, who = threading.get_ident(), caller.get()

        def step(execute, sql, params, many, context):
            _steps[thread] = (time.monotonic(), who)
            try:
                return execute(sql, params, many, context)
            finally:
                _steps[thread] = (time.monotonic(), who)

        _steps[thread] = (time.monotonic(), who)
        try:
            with connection.execute_wrapper(step):
                return func(*args, **kwargs)
        finally:
            _steps.pop(thread, None)

    return database_sync_to_async(noted)


def stalled_for(other_than=_NOBODY):
    """Seconds since a running `database_call`, other than `other_than`'s,
    made its last step (the longest such wait); 0.0 when none is running."""
    now = time.monotonic()
    return max((now - at for at, who in list(_steps.values()) if who is not other_than), default=0.0)
