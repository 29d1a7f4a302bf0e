"""`manage.py runworker` whose market clock starts at TEST_MARKET_NOW (ISO, with
its offset) and moves with the wall clock: an end-to-end test of the SSI feed
must not depend on the hour it runs at (out of trading hours no hub link is held)."""

import datetime as dt
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stocktracker.settings")
    start, began = dt.datetime.fromisoformat(os.environ["TEST_MARKET_NOW"]), time.monotonic()
    from apps.feed import market

    # Before anything binds it (SSISource's default clock is market.vn_now).
    market.vn_now = lambda: start + dt.timedelta(seconds=time.monotonic() - began)
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", "runworker", *sys.argv[1:]])


if __name__ == "__main__":
    main()
