"""Experiment only (`run.py --asgi-app bench.patched_asgi:application`): the project's
application with the consumer's receive loop replaced, to measure a proposed change
before anyone makes it in apps/streams.

Channels' `await_many_dispatch` runs, for every message, one `ensure_future` (a new
task for the next receive) and one `asyncio.wait` over both receive tasks (a waiter
future plus done-callbacks added and removed). Here each source gets one long-lived
pump task instead, and a lock keeps dispatch one-at-a-time as before.
"""

import asyncio

import django

django.setup()

import apps.streams.consumers as consumers  # noqa: E402


async def pump_dispatch(consumer_callables, dispatch):
    lock = asyncio.Lock()

    async def pump(receive):
        while True:
            message = await receive()
            async with lock:
                await dispatch(message)

    tasks = [asyncio.ensure_future(pump(receive)) for receive in consumer_callables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # re-raises StopConsumer and friends, as await_many_dispatch does
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:  # noqa: BLE001, S110 - cancelled or already reported above
                pass


consumers.await_many_dispatch = pump_dispatch

from stocktracker.asgi import application  # noqa: E402, F401
