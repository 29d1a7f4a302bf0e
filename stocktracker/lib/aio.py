"""Small asyncio helpers every app may use."""

import asyncio


def running() -> bool:
    """False once the current task has been asked to stop.

    On Python 3.11 `asyncio.wait_for` can swallow its caller's cancellation when
    the awaited call finishes at the same moment (cpython gh-86296): a
    `while True` service loop around it would then never end, and a shutdown
    that cancels and gathers every task waits for ever. Loops test this instead.
    """
    task = asyncio.current_task()
    return task is None or not task.cancelling()
