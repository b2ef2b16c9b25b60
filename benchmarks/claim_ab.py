#!/usr/bin/env python3
"""µs per claim of 64 (and per completion of those 64), 25,600 pending no-op jobs, one process:
the claim and completion statements alone, without workers, so that two versions of jobq can be
compared on the statements themselves. Run it once per checkout, interleaved:

    for r in 1 2 3; do
      PYTHONPATH=/path/to/a python benchmarks/claim_ab.py a
      PYTHONPATH=/path/to/b python benchmarks/claim_ab.py b
    done

Each run makes and drops its own database on the local server; the first of its three
rounds warms the caches (the median of the three is printed)."""
import sys, time, statistics, psycopg
from jobq.settings import load_settings
from jobq.store import open_store
from jobq.types import NewJob
name = sys.argv[1]
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
db = f"jobq_cb_{name}"
with psycopg.connect(ADMIN, autocommit=True) as c:
    c.execute(f"DROP DATABASE IF EXISTS {db}"); c.execute(f"CREATE DATABASE {db}")
url = f"postgresql://postgres@127.0.0.1:5432/{db}"
s = open_store(load_settings(database_url=url))
claims, completes = [], []
for rnd in range(3):
    for _ in range(25): s.enqueue_many([NewJob("noop") for _ in range(1024)])
    with psycopg.connect(url, autocommit=True) as c: c.execute("VACUUM ANALYZE jobq_jobs")
    tc = tk = 0.0; n = 0
    while True:
        t0 = time.perf_counter(); got = s.claim("w", ["default"], 64, 30); t1 = time.perf_counter()
        if not got: break
        s.complete_many([(g.lease, None) for g in got]); t2 = time.perf_counter()
        tc += t1 - t0; tk += t2 - t1; n += 1
    claims.append(tc / n * 1e6); completes.append(tk / n * 1e6)
s.dispose()
with psycopg.connect(ADMIN, autocommit=True) as c: c.execute(f"DROP DATABASE {db}")
print(name, "claim64_us", round(statistics.median(claims)), "complete64_us", round(statistics.median(completes)))
