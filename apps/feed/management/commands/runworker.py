"""`runworker` with no arguments runs the feed; with channel names it is Channels' own."""

import asyncio
import signal

from channels.management.commands import runworker


class Command(runworker.Command):
    help = "Run the market-data feed (no arguments), or Channels workers for the named channels."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        # Channels requires at least one channel; the feed needs none.
        for action in parser._actions:
            if action.dest == "channels":
                action.nargs = "*"

    def handle(self, *args, **options):
        if options.get("channels"):
            return super().handle(*args, **options)
        from apps.feed.runner import run_feed

        async def main():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await run_feed(stop=stop, elect=True)

        asyncio.run(main())
