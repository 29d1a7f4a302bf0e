"""manage.py benchtokencheck [-n 2000]: what a connect-time token check costs.

Issues a throwaway token, then times `TokenCache.check` (the function behind
`check_token`) on one event loop, as a daphne process runs it:

- malformed: bad checksum, refused before any I/O;
- cached: the same process checked this token before (one shared-state read);
- uncached: a process that has never seen the token (shared-state read, one
  database query, and the once-a-minute last_used claim).

Prints the median and p95 in microseconds and the database queries per check,
then deletes the token and its user.
"""

import statistics
import time

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import connection

from apps.accounts.auth import TokenCache
from apps.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Measure the cost of a connect-time token check (cached, uncached, malformed)."

    def add_arguments(self, parser):
        parser.add_argument("-n", type=int, default=2000, help="checks per case")

    def handle(self, *args, n, **options):
        user = get_user_model().objects.create_user("bench-token-check")
        try:
            _, raw = ApiToken.issue(user, label="bench")
            # Run from this thread: database_sync_to_async then runs its queries
            # here too, on the connection the counter wraps.
            with connection.execute_wrapper(self._count):
                results = async_to_sync(self._run)(raw, n)
        finally:
            user.delete()
        mode = "embedded (in-process state)" if results.pop("embedded") else "Redis shared state"
        self.stdout.write(f"token check, {n} checks per case, {connection.vendor}, {mode}")
        for case, (timings, case_queries) in results.items():
            timings.sort()
            p50 = statistics.median(timings) * 1e6
            p95 = timings[int(len(timings) * 0.95) - 1] * 1e6
            self.stdout.write(
                f"  {case:<10} median {p50:8.1f} µs   p95 {p95:8.1f} µs   queries/check {case_queries / n:.3f}"
            )
        conn_max_age = connection.settings_dict.get("CONN_MAX_AGE")
        self.stdout.write(f"  (CONN_MAX_AGE={conn_max_age}: 0 means every uncached check also opens a connection)")

    queries = 0

    def _count(self, execute, sql, params, many, context):
        self.queries += 1
        return execute(sql, params, many, context)

    async def _run(self, raw, n):
        from apps.streams.state import get_state

        results = {"embedded": get_state().embedded}
        bad = raw[:-1] + ("A" if raw[-1] != "A" else "B")
        warm = TokenCache()
        assert (await warm.check(raw, "market")).ok

        async def timed(case, make_call):
            count = self.queries
            timings = []
            for _ in range(n):
                call = make_call()
                start = time.perf_counter()
                await call
                timings.append(time.perf_counter() - start)
            results[case] = (timings, self.queries - count)

        await timed("malformed", lambda: warm.check(bad, "market"))
        await timed("cached", lambda: warm.check(raw, "market"))
        await timed("uncached", lambda: TokenCache().check(raw, "market"))
        return results
