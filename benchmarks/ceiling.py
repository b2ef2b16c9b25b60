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
