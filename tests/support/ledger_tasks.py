"""Task handlers for the process tests (loaded by workers with JOBQ_TASKS=ledger_tasks).

Every execution is written to a ledger file that the workers' database does not control:
one "start" and one "end" line per execution, appended atomically (O_APPEND, one write).
"""

from __future__ import annotations

import os
import time
from typing import Any

from jobq import JobContext, task


def _write(kind: str, ctx: JobContext) -> None:
    path = os.environ["JOBQ_TEST_LEDGER"]
    line = f"{kind} {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@task("ledger")
def ledger(payload: Any, ctx: JobContext) -> Any:
    """Record the execution; sleep payload["sleep"] seconds (a blocking sleep, in a thread)."""
    _write("start", ctx)
    seconds = (payload or {}).get("sleep", 0) if isinstance(payload, dict) else 0
    if seconds:
        time.sleep(seconds)
    _write("end", ctx)
    return {"pid": os.getpid(), "attempt": ctx.attempt}


def read_ledger(path: str) -> list[tuple[str, int, int, int, float]]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            kind, job_id, attempt, pid, at = line.split()
            rows.append((kind, int(job_id), int(attempt), int(pid), float(at)))
    return rows
