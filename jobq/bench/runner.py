"""`jobq bench`: the project's own benchmark, on SQLite and on PostgreSQL.

What it measures, per database (each in throw-away databases: a temp-dir file for SQLite, a
database it creates and drops for PostgreSQL):

- enqueue: one job per call from the Python client (in-process ``JobService.enqueue``); one
  job per REST request from concurrent clients against a real ``python -m jobq api`` process;
  batches through ``JobService.enqueue_many``; batches through ``POST /jobs/batch``. The REST
  clients are threads of a separate process (``python -m jobq.bench.rest_client``), so the
  client does not share the benchmark process's interpreter.
- drain: N no-op jobs queued first (untimed), then W ``python -m jobq worker`` processes with
  concurrency C each; jobs/s from the first claim to the last completion, and over the middle
  80 % of completions, both from the database's own timestamps (``started_at``,
  ``finished_at``), never from polling.
- pickup latency: idle workers; jobs enqueued one by one about 20 ms apart; from the moment
  the enqueue call returned in the client to the moment the handler started in the worker.
- growth: the drain again with 100k and 1M finished jobs already in the table, and a drain of
  a larger queue.
- peak memory (VmHWM) of the API and of each worker process.

Every phase has a timeout; every process it starts is stopped by its PID at the end (also on
Ctrl-C or an error); only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jobq.bench.backends import Backend
from jobq.bench.context import Bench
from jobq.bench.drain import drain_phase
from jobq.bench.enqueue import enqueue_phase
from jobq.bench.figures import memory_summary
from jobq.bench.options import Options, PhaseError
from jobq.bench.pickup import pickup_phase
from jobq.bench.report import print_report
from jobq.harness import redact


def run_backend(bench: Bench, kind: str, res: dict[str, Any]) -> None:
    """Every phase on one kind of database; figures go into ``res`` as they come, so an
    interrupted run still reports what it measured."""
    o = bench.opts
    backend = Backend(kind, o.pg_url, bench.work_dir)
    res["errors"] = []

    def phase(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            res.update(fn())
        except PhaseError as exc:
            res["errors"].append(f"{name}: {exc}")
            bench.progress.console.print(f"[red]{kind} {name}: {exc}[/red]")
        except Exception as exc:  # noqa: BLE001 - one broken phase must not hide the rest
            res["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            bench.progress.console.print(f"[red]{kind} {name}: {traceback.format_exc()}"
                                         "[/red]")

    try:
        backend.check()
        url = backend.new_url("settings")
        service = bench.service(url)
        try:
            res["settings"] = service.store.server_settings()
        finally:
            service.close()
            backend.drop(url)
        if "enqueue" in o.phases:
            phase("enqueue", lambda: {"enqueue": enqueue_phase(bench, backend, kind)})
            for err in res.get("enqueue", {}).get("errors", []):
                res["errors"].append(f"enqueue {err}")
        if "drain" in o.phases or "growth" in o.phases:
            phase("drain", lambda: drain_phase(
                bench, backend, kind, growth="growth" in o.phases, drain="drain" in o.phases))
        if "pickup" in o.phases:
            phase("pickup", lambda: {"pickup": pickup_phase(bench, backend, kind)})
    except PhaseError as exc:
        res["errors"].append(str(exc))
        bench.progress.console.print(f"[red]{kind}: {exc}[/red]")
    finally:
        bench.stop_all()
        backend.drop_all()
        res["memory"] = memory_summary(res)


def run(opts: Options) -> int:
    """Run the benchmark; print the table; write the JSON. Returns the exit code."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from jobq.settings import load_settings

    # Not a terminal (a log, CI): wide enough that the table's rows stay on one line.
    console = Console() if sys.stdout.isatty() else Console(width=130)
    cores = os.cpu_count()
    worker_settings = load_settings().model_dump(
        exclude={"database_url", "tasks", "host", "port", "processes", "concurrency",
                 "queues", "log_level", "auto_migrate"})
    doc: dict[str, Any] = {
        "version": 1,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": cores, "platform": platform.platform(),
                    "python": platform.python_version()},
        "options": {**{k: (str(v) if isinstance(v, Path) else v)
                       for k, v in asdict(opts).items()}, "pg_url": redact(opts.pg_url)},
        "process_settings": worker_settings,
        "databases": {},
    }
    console.print(f"jobq bench{' --quick' if opts.quick else ''}: {', '.join(opts.dbs)}; "
                  f"{cores} cores (os.cpu_count()); phases {', '.join(opts.phases)}")
    work_dir = Path(tempfile.mkdtemp(prefix="jobq-bench-"))
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    interrupted = False
    failed = False
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
            bench = Bench(opts, progress, work_dir)
            try:
                for kind in opts.dbs:
                    began = time.monotonic()
                    res: dict[str, Any] = doc["databases"].setdefault(kind, {})
                    try:
                        run_backend(bench, kind, res)
                    finally:
                        res["bench_seconds"] = round(time.monotonic() - began, 1)
                    failed |= bool(res["errors"])
            except KeyboardInterrupt:
                interrupted = True
            finally:
                bench.stop_all()
    finally:
        signal.signal(signal.SIGTERM, previous)
    doc["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc["interrupted"] = interrupted
    opts.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    print_report(console, doc)
    console.print(f"results written to {opts.json_out}")
    if failed or interrupted:
        console.print(f"[red]{'interrupted' if interrupted else 'some phases failed'}; "
                      f"process logs in {work_dir}[/red]")
        return 130 if interrupted else 1
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0
