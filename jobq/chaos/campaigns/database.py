"""Campaigns against the database: PostgreSQL restarted, crashed and its backends
terminated (through pg_ctlcluster), and a connection pool held exhausted."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psycopg

from jobq.chaos.checks import Check
from jobq.chaos.load import LoadGen
from jobq.chaos.setup import Ctx, Setup, finish, start_workers, work
from jobq.harness import server_address, wait_until


def _pg_cluster() -> tuple[str, str] | None:
    if shutil.which("pg_ctlcluster") is None:
        return None
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*"))
    return (versions[-1], "main") if versions else None


def _pg_ctl(action: str, *extra: str) -> None:
    cluster = _pg_cluster()
    assert cluster is not None
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", cluster[0], cluster[1],
                    action, *extra], check=True, capture_output=True, timeout=120)


def _pg_ready(admin_url: str) -> bool:
    try:
        with psycopg.connect(admin_url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def database_faults(ctx: Ctx) -> list[Check]:
    """PostgreSQL restarted (fast), crashed (immediate stop, start), its backends terminated."""
    host = server_address(ctx.admin_url)[0] or "localhost"
    if _pg_cluster() is None or host not in ("127.0.0.1", "localhost", "::1"):
        return [Check("database faults", "needs a local PostgreSQL with pg_ctlcluster", False)]
    with Setup(ctx, "3-database-faults") as s:
        s.cluster.start_api()
        start_workers(s.cluster, 3, concurrency=4)
        assert s.cluster.wait_api()
        load = LoadGen(s.cluster.api_url, 16, work(20), ctx.scale(1500, 600)).start()
        downs = []
        for fault in ("restart-fast", "terminate-backends", "crash-immediate"):
            time.sleep(2.5)
            began = time.monotonic()
            if fault == "restart-fast":
                _pg_ctl("restart", "-m", "fast")
            elif fault == "crash-immediate":
                _pg_ctl("stop", "-m", "immediate")
                time.sleep(1.0)
                _pg_ctl("start")
            else:
                with psycopg.connect(ctx.admin_url, autocommit=True) as c:
                    c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (s.dbs.name,))
            wait_until(lambda: _pg_ready(ctx.admin_url), 60, 0.2)
            downs.append(f"{fault} {time.monotonic() - began:.1f}s")
        checks = finish(s, load, drain_s=180)
        alive = [p.name for p in s.cluster.procs if not p.alive()]
        checks.append(Check("processes survived", f"{len(alive)} exited ({', '.join(downs)})",
                            not alive))
        return checks


def pool_exhaustion(ctx: Ctx) -> list[Check]:
    """Connection pool exhausted: quick 503s, no hang, no 500."""
    with Setup(ctx, "11-pool-exhaustion") as s:
        s.cluster.start_api(JOBQ_DB_POOL_SIZE="2", JOBQ_DB_MAX_OVERFLOW="0",
                            JOBQ_DB_TIMEOUT_SECONDS="1")
        assert s.cluster.wait_api()
        lock_s = 4.0
        results: list[tuple[int, float, bool]] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            with httpx.Client(base_url=s.cluster.api_url, timeout=30) as c:
                end = time.monotonic() + lock_s + 2
                while time.monotonic() < end:
                    t = time.monotonic()
                    try:
                        r = (c.get("/stats") if i % 2 else c.post(
                            "/jobs", json={"task_type": "chaos.work", "payload": {"ms": 1}}))
                        item = (r.status_code, time.monotonic() - t,
                                bool(r.headers.get("retry-after")))
                    except httpx.HTTPError:
                        item = (0, time.monotonic() - t, False)
                    with lock:
                        results.append(item)

        with psycopg.connect(s.dbs.jobq_url) as blocker:
            blocker.execute("LOCK TABLE jobq_jobs IN ACCESS EXCLUSIVE MODE")
            threads = [threading.Thread(target=client, args=(i,), daemon=True)
                       for i in range(12)]
            for t in threads:
                t.start()
            time.sleep(lock_s)
            blocker.rollback()
        for t in threads:
            t.join(60)
        hung = [t for t in threads if t.is_alive()]
        e500 = sum(1 for code, _, _ in results if code == 500 or code == 0)
        quick = [d for code, d, _ in results if code == 503]
        no_retry_after = sum(1 for code, _, ra in results if code == 503 and not ra)
        slowest = max((d for _, d, _ in results), default=0.0)
        return [
            Check("server errors", f"{e500} 500s or dropped connections of {len(results)}",
                  e500 == 0),
            Check("quick 503s", f"{len(quick)} 503s, slowest {max(quick, default=0):.2f}s, "
                  f"{no_retry_after} without Retry-After",
                  bool(quick) and max(quick) <= 2.0 and no_retry_after == 0),
            Check("no hang", f"slowest response {slowest:.2f}s (lock held {lock_s}s), "
                  f"{len(hung)} clients hung", not hung and slowest <= lock_s + 3),
        ]
