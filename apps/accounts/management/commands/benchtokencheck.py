"""manage.py benchtokencheck [-n 2000]: what a token check costs.

A measurement tool for operators and reviewers, not a test: the test suite
never runs it (pytest collects only test_*.py files and no test calls this
command). It writes to the configured database and shared state: a throwaway
user (`bench-token-check-<random>`) and one token, deleted again at the end.

It times, on one event loop as a daphne process runs them:

- malformed: bad checksum, refused before any I/O;
- cached: a connect (`check_token`) of a token this process checked before
  (one shared-state read);
- uncached: a connect on a process that has never seen the token
  (shared-state read, one database query, and the once-a-minute last_used
  claim);
- recheck: the re-check of an open socket's token (`recheck_token`, every
  TOKEN_RECHECK_INTERVAL and on every live-effect message) while the token is
  unchanged (one shared-state read);
- recheck-chg: the same right after the token's generation changed (one
  database query): what every re-check cost before re-checks were cached.

Prints the median and p95 in microseconds and the database queries per check.
"""

import secrets
import statistics
import time

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import connection

from apps.accounts.auth import TokenCache
from apps.accounts.models import ApiToken


class Command(BaseCommand):
    help = (
        "Measurement tool (not a test; nothing in the test suite runs it): time token checks on connect "
        "(malformed, cached, uncached) and re-checks of open sockets (cached, after a change). Creates a "
        "throwaway user and token in the configured database and deletes them afterwards."
    )

    def add_arguments(self, parser):
        parser.add_argument("-n", type=int, default=2000, help="checks per case")

    def handle(self, *args, n, **options):
        user = get_user_model().objects.create_user(f"bench-token-check-{secrets.token_hex(4)}")
        try:
            token, raw = ApiToken.issue(user, label="bench")
            # Run from this thread: database_sync_to_async then runs its queries
            # here too, on the connection the counter wraps.
            with connection.execute_wrapper(self._count):
                results = async_to_sync(self._run)(token, raw, n)
        finally:
            user.delete()
        mode = "embedded (in-process state)" if results.pop("embedded") else "Redis shared state"
        self.stdout.write(f"token check, {n} checks per case, {connection.vendor}, {mode}")
        for case, (timings, case_queries) in results.items():
            timings.sort()
            p50 = statistics.median(timings) * 1e6
            p95 = timings[int(len(timings) * 0.95) - 1] * 1e6
            self.stdout.write(
                f"  {case:<11} median {p50:8.1f} µs   p95 {p95:8.1f} µs   queries/check {case_queries / n:.3f}"
            )
        conn_max_age = connection.settings_dict.get("CONN_MAX_AGE")
        self.stdout.write(f"  (CONN_MAX_AGE={conn_max_age}: 0 means every uncached check also opens a connection)")

    queries = 0

    def _count(self, execute, sql, params, many, context):
        self.queries += 1
        return execute(sql, params, many, context)

    async def _run(self, token, raw, n):
        from apps.accounts.signals import GENERATION_TTL
        from stocktracker.lib import keys
        from stocktracker.lib.state import get_state

        state = get_state()
        results = {"embedded": state.embedded}
        bad = raw[:-1] + ("A" if raw[-1] != "A" else "B")
        warm = TokenCache()
        assert (await warm.check(raw, "market")).ok

        async def change():
            await state.generation_bump([keys.token_generation(token.prefix)], GENERATION_TTL)

        async def timed(case, make_call, before=None):
            count = self.queries
            timings = []
            for _ in range(n):
                if before is not None:
                    await before()  # not timed, but its queries (none) would count
                call = make_call()
                start = time.perf_counter()
                result = await call
                timings.append(time.perf_counter() - start)
            assert case == "malformed" or result.ok, (case, result)
            results[case] = (timings, self.queries - count)

        await timed("malformed", lambda: warm.check(bad, "market"))
        await timed("cached", lambda: warm.check(raw, "market"))
        await timed("uncached", lambda: TokenCache().check(raw, "market"))
        await timed("recheck", lambda: warm.recheck(token.pk, "market"))
        await timed("recheck-chg", lambda: warm.recheck(token.pk, "market"), before=change)
        return results
