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


class PerLoop:
    """One object per running event loop, made on first use: a daphne process
    has one loop, while tests start a loop per test (and asyncio objects such
    as redis connections cannot cross loops). Closed loops' objects are dropped."""

    def __init__(self, factory):
        self.factory = factory
        self.objects = {}

    def get(self):
        loop = asyncio.get_running_loop()
        found = self.objects.get(loop)
        if found is None:
            for old in [lp for lp in self.objects if lp.is_closed()]:
                del self.objects[old]
            found = self.objects[loop] = self.factory()
        return found

    def clear(self):
        self.objects.clear()
