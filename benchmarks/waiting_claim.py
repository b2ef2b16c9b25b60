#!/usr/bin/env python3
"""Claim cost with a million waiting jobs in the table, against none: two scratch databases,
20,000 pending jobs each, claims of 10 until empty, interleaved rounds."""
import statistics, sys, time
import psycopg
from jobq.settings import load_settings
from jobq.store import open_store

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
WAITING = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
PENDING = 20_000

def fresh(name, waiting):
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    store = open_store(load_settings(database_url=url))
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO jobq_jobs (task_type, payload, queue, priority, state, attempts,"
                  " max_attempts, run_at, created_at, parents_left) SELECT 'noop', 'null', 'default', 0,"
                  " 'waiting', 0, 3, now(), now(), 1 FROM generate_series(1, %s)", (waiting,))
        c.execute("VACUUM ANALYZE jobq_jobs")
    return store, url

def reset(url):
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DELETE FROM jobq_jobs WHERE state <> 'waiting'")
        c.execute("INSERT INTO jobq_jobs (task_type, payload, queue, priority, state, attempts,"
                  " max_attempts, run_at, created_at) SELECT 'noop', 'null', 'default', 0,"
                  " 'pending', 0, 3, now(), now() FROM generate_series(1, %s)", (PENDING,))
        c.execute("VACUUM ANALYZE jobq_jobs")

def drain(store):
    t = time.perf_counter(); n = 0
    while True:
        got = store.claim("w", ["default"], 10, 30)
        if not got:
            break
        n += len(got)
    assert n == PENDING, n
    return (time.perf_counter() - t) / (PENDING / 10) * 1e6  # µs per claim

a, ua = fresh("jobq_wait_none", 0)
b, ub = fresh("jobq_wait_million", WAITING)
ra, rb = [], []
for _ in range(3):
    reset(ua); ra.append(drain(a))
    reset(ub); rb.append(drain(b))
print("claim of 10, µs: none", [round(x) for x in ra], "with", WAITING, "waiting", [round(x) for x in rb])
print("ratio (million/none) median", round(statistics.median(rb) / statistics.median(ra), 3),
      "range", round(min(rb)/max(ra), 3), "-", round(max(rb)/min(ra), 3))
with psycopg.connect(ub) as c:
    reset(ub)
    plan = c.execute("EXPLAIN (ANALYZE, BUFFERS) SELECT id FROM jobq_jobs WHERE state = 'pending' AND queue IN ('default') AND run_at <= now() ORDER BY priority DESC, run_at, id LIMIT 10 FOR UPDATE SKIP LOCKED").fetchall()
    print("\n".join(r[0] for r in plan))
a.dispose(); b.dispose()
with psycopg.connect(ADMIN, autocommit=True) as c:
    c.execute("DROP DATABASE jobq_wait_none"); c.execute("DROP DATABASE jobq_wait_million")
