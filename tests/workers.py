"""Each pytest-xdist worker gets its own Redis (loaded with `-p tests.workers`,
before Django reads its settings).

`scripts/with_services.py` starts one redis-server per worker and lists them
in REDIS_URLS; worker gwN takes the Nth. Redis pub/sub, FLUSHDB and INFO
counters are server-wide, so two workers sharing one server would see each
other's frames. PostgreSQL needs nothing: pytest-django gives every worker its
own test database.
"""

import os

_worker = os.environ.get("PYTEST_XDIST_WORKER")
_urls = os.environ.get("REDIS_URLS", "").split() or os.environ.get("REDIS_URL", "").split()
if _worker and _urls:
    _index = int(_worker.removeprefix("gw"))
    if _index >= len(_urls):
        raise RuntimeError(
            f"pytest worker {_worker} has no Redis of its own: REDIS_URLS lists {len(_urls)}; "
            "run the tests through `make test` (TEST_WORKERS sets both)"
        )
    os.environ["REDIS_URL"] = _urls[_index]
