"""The database's own ceiling: pgbench running ceiling/claim_complete.sql (claim 100 with
FOR UPDATE SKIP LOCKED, then complete them) with 2 clients on a minimal pre-filled table, in a
throw-away database; reported as jobs/s (pgbench's transactions/s × 100)."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import psycopg
from jobq.harness import PgDatabases

from system import HERE

ROWS = 400_000


def ceiling(admin_url: str, seconds: int = 5) -> dict[str, Any]:
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return {"error": "pgbench not found (Debian: apt-get install postgresql-client)"}
    db = PgDatabases(admin_url, name="cmp_ceiling_" + __import__("uuid").uuid4().hex[:8])
    db.create()
    try:
        p = urlsplit(db.url())
        base = ["-h", p.hostname or "127.0.0.1", "-p", str(p.port or 5432),
                "-U", p.username or "postgres"]
        subprocess.run(["psql", *base, "-q", "-v", "ON_ERROR_STOP=1", "-v", f"rows={ROWS}",
                        "-f", str(HERE / "ceiling" / "schema.sql"), db.name],
                       check=True, timeout=300, capture_output=True)
        run = subprocess.run(
            [pgbench, *base, "-n", "-c", "2", "-j", "2", "-T", str(seconds), "-f",
             str(HERE / "ceiling" / "claim_complete.sql"), db.name],
            check=True, timeout=seconds + 120, capture_output=True, text=True)
        with psycopg.connect(db.url()) as c:
            left = c.execute("SELECT count(*) FROM jobs WHERE state = 'pending'").fetchone()[0]
            done = c.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0]
    finally:
        db.drop()
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", run.stdout)
    if m is None or left == 0:
        return {"error": "pgbench: no tps figure, or the table ran dry", "out": run.stdout}
    return {"jobs_per_s": round(float(m.group(1)) * 100, 1), "clients": 2, "batch": 100,
            "seconds": seconds, "jobs_done": done, "pending_left": left}


# SQLite's ceiling: the same loop in plain SQL through Python's sqlite3, 2 processes on one
# file with the settings every system here gets (WAL, synchronous=FULL), each claim and each
# completion its own BEGIN IMMEDIATE transaction (the single writer is taken up front).

SQLITE_ROWS = 1_000_000
_SQLITE_SCHEMA = """
CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL DEFAULT 'pending',
                   priority INTEGER NOT NULL DEFAULT 0, payload TEXT, locked_by INTEGER,
                   started_at REAL, finished_at REAL);
CREATE INDEX jobs_pending ON jobs (priority, id) WHERE state = 'pending';
"""
_SQLITE_CLAIM = """UPDATE jobs SET state = 'running', locked_by = ?, started_at = unixepoch('subsec')
WHERE id IN (SELECT id FROM jobs WHERE state = 'pending' ORDER BY priority, id LIMIT 100)
RETURNING id"""
_SQLITE_DONE = ("UPDATE jobs SET state = 'done', finished_at = unixepoch('subsec') "
                "WHERE id BETWEEN ? AND ? AND locked_by = ? AND state = 'running'")


def _sqlite_connect(path: str) -> Any:
    import sqlite3

    con = sqlite3.connect(path, isolation_level=None, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    return con


def _sqlite_loop(path: str, token: int, until: float) -> int:
    import time

    con, done = _sqlite_connect(path), 0
    while time.time() < until:
        con.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in con.execute(_SQLITE_CLAIM, (token,))]
        con.execute("COMMIT")
        if not ids:
            break
        con.execute("BEGIN IMMEDIATE")
        done += con.execute(_SQLITE_DONE, (min(ids), max(ids), token)).rowcount
        con.execute("COMMIT")
    con.close()
    return done


def sqlite_ceiling(work: Any, seconds: int = 5) -> dict[str, Any]:
    import os
    import tempfile
    import time
    from concurrent.futures import ProcessPoolExecutor

    path = os.path.join(tempfile.mkdtemp(prefix="ceiling-", dir=work), "ceiling.db")
    con = _sqlite_connect(path)
    con.executescript(_SQLITE_SCHEMA)
    con.execute("BEGIN")
    con.executemany("INSERT INTO jobs (payload) VALUES (?)",
                    ((f'{{"k": {k}}}',) for k in range(SQLITE_ROWS)))
    con.execute("COMMIT")
    con.execute("ANALYZE")
    con.close()
    try:
        with ProcessPoolExecutor(2) as pool:
            began = time.time()
            until = began + seconds
            done = sum(pool.map(_sqlite_loop, [path, path], [1, 2], [until, until]))
            took = time.time() - began
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    if done >= SQLITE_ROWS:
        return {"error": "the ceiling's table ran dry"}
    return {"jobs_per_s": round(done / took, 1), "clients": 2, "batch": 100,
            "seconds": round(took, 2), "jobs_done": done}
