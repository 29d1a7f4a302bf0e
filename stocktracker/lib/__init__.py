"""Project-wide primitives every app may use; nothing here knows an app.

- `state`: key-value, leases script, counters, generations, claims and the
  health ping, on Redis (production) or in process memory (embedded mode).
- `catalogue`: the stream names and their labels.
- `redis`: every Redis client, built from REDIS_URL (one server, or a master
  found through Sentinel).
"""
