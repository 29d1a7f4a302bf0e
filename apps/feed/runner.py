"""Placeholder until the feed lands: see issue 5."""


async def run_feed(*, stop, elect):
    await stop.wait()
