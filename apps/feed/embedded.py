"""Embedded mode: run the feed loop inside the web process.

Daphne has no ASGI lifespan, so the loop starts on the first scope this
process serves (HTTP or websocket) and lives as long as the event loop.
"""

import asyncio
import logging

from django.conf import settings

log = logging.getLogger("apps.feed")


class EmbeddedFeed:
    def __init__(self, app):
        self.app = app
        self.task = None

    async def __call__(self, scope, receive, send):
        if self.task is None and settings.FEED_IN_PROCESS and scope["type"] in ("http", "websocket"):
            from .runner import run_feed

            log.info("starting the feed inside the web process (source=%s)", settings.FEED_SOURCE)
            # Electing costs nothing in embedded mode (always the leader) and keeps
            # several web processes sharing Redis from all polling at once.
            self.task = asyncio.ensure_future(run_feed(stop=asyncio.Event(), elect=True))
        return await self.app(scope, receive, send)
