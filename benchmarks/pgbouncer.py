"""What PgBouncer costs jobq: enqueue and drain throughput direct, direct without prepared
statements, and through PgBouncer in session and in transaction mode (README, "Behind
PgBouncer").

    .venv/bin/python benchmarks/pgbouncer.py [--rounds 5] [--jobs 5000] [--singles 1000]

Each round runs every configuration once, in a rotated order (so that a drifting machine
does not favour one); figures are medians over the rounds with their range, and each
configuration's ratio to "direct" within the same round. Enqueue: single jobs from one
thread (one autocommit statement each: round-trip bound), then batches of 100 (5x as many
jobs). Drain: queued no-op jobs, 2 worker processes x 64, the rate from the jobs' own
timestamps (first claim to last completion; the jobs fall due once both workers serve), so
the workers' start-up is not in it. PgBouncer gets a pool of 20 server connections in both
modes: what is measured is the pooler's hop and the lost prepared statements, not a pool
too small. The LISTEN goes direct wherever the pooler would break it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from jobq.harness import PgBouncer, PgDatabases, Processes, child_env, wait_for
from jobq.service import JobService
from jobq.registry import load_registry
from jobq.settings import load_settings
from jobq.store import open_store

CONFIGS = ("direct", "direct-noprepare", "session", "transaction")
#: The queued jobs of a drain are due this long after they were queued.
START_SECONDS = 10.0


def settings_env(config: str, db: str, bouncers: dict[str, PgBouncer]) -> dict[str, str]:
    """The JOBQ_* settings of one configuration (the LISTEN always direct where it can be)."""
    if config == "direct":
        return {"JOBQ_DATABASE_URL": db}
    if config == "direct-noprepare":  # transaction-pooler settings, without the pooler
        return {"JOBQ_DATABASE_URL": db, "JOBQ_DB_POOLER": "transaction",
                "JOBQ_LISTEN_URL": db}
    env = {"JOBQ_DATABASE_URL": bouncers[config].url(db), "JOBQ_DB_POOLER": config}
    if config == "transaction":
        env["JOBQ_LISTEN_URL"] = db
    return env


def as_settings(env: dict[str, str]):  # type: ignore[no-untyped-def]
    return load_settings(database_url=env["JOBQ_DATABASE_URL"],
                         db_pooler=env.get("JOBQ_DB_POOLER"),
                         listen_url=env.get("JOBQ_LISTEN_URL"), tasks=["jobq.bench.tasks"])


def enqueue_rates(env: dict[str, str], singles: int) -> tuple[float, float]:
    settings = as_settings(env)
    store = open_store(settings)
    service = JobService(store, load_registry(settings.tasks), settings)
    try:
        for _ in range(20):  # warm: connections open, statements cached (or not)
            service.enqueue("bench_noop", {})
        began = time.perf_counter()
        for i in range(singles):
            service.enqueue("bench_noop", {"i": i})
        single = singles / (time.perf_counter() - began)
        batches = max(singles // 20, 5)  # 5x as many jobs as the singles
        began = time.perf_counter()
        for b in range(batches):
            service.enqueue_many([{"task_type": "bench_noop", "payload": {"i": i}}
                                  for i in range(100)])
        batched = batches * 100 / (time.perf_counter() - began)
    finally:
        service.close()
    return single, batched


def _count(db: str, sql: str) -> int:
    with psycopg.connect(db, autocommit=True) as conn:
        return int(conn.execute(sql).fetchone()[0])


def drain_rate(env: dict[str, str], db: str, jobs: int, work: Path) -> float:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("TRUNCATE jobq_jobs, jobq_attempts, jobq_workers RESTART IDENTITY CASCADE")
    settings = load_settings(database_url=db, tasks=["jobq.bench.tasks"])
    store = open_store(settings)
    service = JobService(store, load_registry(settings.tasks), settings)
    # Due a few seconds from now, by when both workers serve: the drain starts with both.
    for first in range(0, jobs, 1000):
        service.enqueue_many([{"task_type": "bench_noop", "payload": {"i": i},
                               "delay_seconds": START_SECONDS}
                              for i in range(first, min(first + 1000, jobs))])
    due = time.monotonic() + START_SECONDS
    service.close()
    procs = Processes(work, own_sessions=True)
    run_env = child_env({**env, "JOBQ_TASKS": "jobq.bench.tasks", "JOBQ_LOG_LEVEL": "warning",
                         "JOBQ_POLL_INTERVAL_SECONDS": "0.2"})
    try:
        for i in range(2):
            procs.launch(f"worker-{i}", [sys.executable, "-m", "jobq", "worker",
                                         "--concurrency", "64"], run_env)

        wait_for(lambda: _count(db, "SELECT count(*) FROM jobq_workers") == 2, START_SECONDS,
                 "both workers to serve")
        if time.monotonic() > due:
            raise SystemExit("the workers took longer to start than the jobs took to be due")

        def drained() -> bool:
            with psycopg.connect(db, autocommit=True) as conn:
                return conn.execute("SELECT count(*) FROM jobq_jobs WHERE state <> 'done'"
                                    ).fetchone()[0] == 0

        wait_for(drained, 300, "the drain", interval=0.25)
    finally:
        codes = procs.stop()
    if any(codes.values()):
        raise SystemExit(f"a worker exited with {codes}:\n{procs.logs()}")
    with psycopg.connect(db, autocommit=True) as conn:
        first, last = conn.execute("SELECT extract(epoch FROM min(started_at)), "
                                   "extract(epoch FROM max(finished_at)) FROM jobq_jobs"
                                   ).fetchone()
    return jobs / float(last - first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=5000, help="jobs per drain")
    ap.add_argument("--singles", type=int, default=1000, help="single enqueues per round")
    args = ap.parse_args()
    dbs = PgDatabases(args.pg_url)
    dbs.create()
    db = dbs.url()
    bouncers = {m: PgBouncer(args.pg_url, pool_mode=m, pool_size=20)
                for m in ("session", "transaction")}
    figures: dict[str, dict[str, list[float]]] = {c: {} for c in CONFIGS}
    try:
        open_store(load_settings(database_url=db)).dispose()  # migrate
        for b in bouncers.values():
            b.start()
        for r in range(args.rounds):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
            for config in order:
                env = settings_env(config, db, bouncers)
                single, batched = enqueue_rates(env, args.singles)
                with tempfile.TemporaryDirectory(prefix="jobq-bench-pool-") as work:
                    drain = drain_rate(env, db, args.jobs, Path(work))
                for name, value in (("enqueue 1/call", single), ("enqueue 100/call", batched),
                                    ("drain", drain)):
                    figures[config].setdefault(name, []).append(value)
                print(f"round {r + 1} {config:17} enqueue {single:7.0f}/s, "
                      f"batched {batched:7.0f}/s, drain {drain:6.0f}/s", flush=True)
    finally:
        for b in bouncers.values():
            b.remove()
        dbs.drop()
    print("\nmedian jobs/s [min-max]; ratio to direct per round: median [min-max]")
    for config in CONFIGS:
        for name, values in figures[config].items():
            ratios = [v / d for v, d in zip(values, figures["direct"][name])]
            print(f"{config:17} {name:17} {statistics.median(values):7.0f} "
                  f"[{min(values):.0f}-{max(values):.0f}]   x{statistics.median(ratios):.2f} "
                  f"[{min(ratios):.2f}-{max(ratios):.2f}]")


if __name__ == "__main__":
    main()
