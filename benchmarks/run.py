"""jobq side by side with its peers, in one run, as ratios.

    benchmarks/run.sh --rounds 3            # or: benchmarks/.venv/bin/python benchmarks/run.py

Interleaved rounds: in each round, on PostgreSQL the pgbench ceiling, then jobq, PgQueuer and
Procrastinate; on SQLite the plain-SQL ceiling, then jobq and Huey (the order of the systems alternates from round to
round). Each system gets a throw-away database per round, dropped at the end. See README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jobq.harness import PgDatabases, drop_sqlite, redact

import measure
from ceiling import ceiling, sqlite_ceiling
from report import print_report
from sys_huey import Huey
from sys_jobq import Jobq
from sys_pg_peers import PgQueuer, Procrastinate
from system import HERE, version

SYSTEMS = {"postgresql": [Jobq, PgQueuer, Procrastinate], "sqlite": [Jobq, Huey]}


def options() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=10_000, help="jobs per drain")
    ap.add_argument("--enqueue-jobs", type=int, default=2_000, help="single-enqueue jobs")
    ap.add_argument("--pickup-samples", type=int, default=200)
    ap.add_argument("--pickup-gap-ms", type=float, default=20.0)
    ap.add_argument("--db", choices=["postgresql", "sqlite"], action="append",
                    help="only these databases (repeatable; default both)")
    ap.add_argument("--only", action="append", metavar="SYSTEM",
                    help="only these systems (repeatable, e.g. --only jobq --only pgqueuer; "
                    "default all); the ceiling always runs")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="admin database on 127.0.0.1 (throw-away databases are created there)")
    ap.add_argument("--ceiling-seconds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300, help="per figure, seconds")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default results/…)")
    o = ap.parse_args()
    if "127.0.0.1" not in o.pg_url and "localhost" not in o.pg_url:
        ap.error("--pg-url must point at 127.0.0.1")
    o.db = o.db or ["postgresql", "sqlite"]
    if o.only:
        known = {c.name for systems in SYSTEMS.values() for c in systems}
        if set(o.only) - known:
            ap.error(f"--only takes {', '.join(sorted(known))}")
        for kind in SYSTEMS:
            SYSTEMS[kind] = [c for c in SYSTEMS[kind] if c.name in o.only]
    return o


def run_system(cls: type, kind: str, o: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every figure of one system in one round, on a fresh database; errors recorded."""
    res: dict[str, Any] = {"errors": []}
    stamp_dir = Path(tempfile.mkdtemp(prefix=f"{cls.name}-", dir=work))
    if kind == "postgresql":
        db = PgDatabases(o.pg_url, name=f"cmp_{cls.name}_{uuid.uuid4().hex[:8]}")
        db.create()
        url, pg = db.url(), (o.pg_url, db.name)
    else:
        db, url, pg = None, f"sqlite:///{stamp_dir / 'bench.db'}", None
    system = cls(url, stamp_dir)
    log_dir = stamp_dir

    def figure(key: str, fn: Any) -> None:
        print(f"  {kind} {cls.name}: {key} …", flush=True)
        try:
            res[key] = fn()
        except Exception as exc:  # noqa: BLE001 - one broken figure must not hide the rest
            res["errors"].append(f"{key}: {type(exc).__name__}: {exc}")
            (log_dir / "errors.txt").open("a").write(traceback.format_exc())
            print(f"  ! {key}: {exc} (logs in {log_dir})", flush=True)

    try:
        system.prepare()
        try:
            figure("pickup", lambda: measure.pickup(
                system, o.pickup_samples, o.pickup_gap_ms, log_dir, o.timeout))
            for setting in cls.settings:
                figure(f"drain_{setting}", lambda s=setting: measure.drain(
                    system, s, o.jobs, log_dir, o.timeout, pg))
            figure("enqueue_single", lambda: measure.enqueue_single(system, o.enqueue_jobs))
            if hasattr(system, "api"):  # jobq: it has a REST API to measure
                figure("enqueue_rest", lambda: measure.enqueue_rest(
                    system, o.enqueue_jobs, log_dir, o.timeout))
        finally:
            system.close()
    except Exception as exc:  # noqa: BLE001
        res["errors"].append(f"set-up: {type(exc).__name__}: {exc}")
        print(f"  ! set-up: {traceback.format_exc()}", flush=True)
    finally:
        if db is not None:
            db.drop()
        else:
            drop_sqlite(url)
    return res


def main() -> int:
    o = options()
    work = Path(tempfile.mkdtemp(prefix="jobq-compare-"))
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    doc: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jobq_commit": commit,
        "versions": {d: version(d) for d in ("jobq", "pgqueuer", "procrastinate", "huey",
                                              "asyncpg", "psycopg")},
        "machine": f"{os.cpu_count()} cores, {platform.platform()}, "
                   f"Python {platform.python_version()}",
        "options": {**{k: str(v) for k, v in vars(o).items()}, "jobs": o.jobs,
                    "rounds": o.rounds, "pg_url": redact(o.pg_url)},
        "settings": {c.name: c.settings for kind in o.db for c in SYSTEMS[kind]},
        "ceiling": [],
        "ceiling_sqlite": [],
        "results": {kind: {c.name: [] for c in SYSTEMS[kind]} for kind in o.db},
    }
    out = o.out or HERE / "results" / f"compare-{doc['date'][:19].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"work directory (logs): {work}", flush=True)
    for r in range(o.rounds):
        print(f"round {r + 1}/{o.rounds}", flush=True)
        for kind in o.db:
            if kind == "postgresql":
                print("  postgresql: ceiling (pgbench) …", flush=True)
                doc["ceiling"].append(ceiling(o.pg_url, o.ceiling_seconds))
            else:
                print("  sqlite: ceiling (plain SQL, sqlite3) …", flush=True)
                doc["ceiling_sqlite"].append(sqlite_ceiling(work, o.ceiling_seconds))
            order = SYSTEMS[kind] if r % 2 == 0 else SYSTEMS[kind][::-1]
            for cls in order:
                doc["results"][kind][cls.name].append(run_system(cls, kind, o, work))
            out.write_text(json.dumps(doc, indent=2))
    print_report(doc)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
