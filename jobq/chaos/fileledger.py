"""A ledger of executions in a file, for the campaigns that cut hosts off the network: a host
in its own namespace still shares this machine's file system and clock, so it can record an
execution while no database is reachable, and the times of different hosts compare.

Each start and end is one line of JSON appended with O_APPEND (one write per line, so lines of
concurrent writers do not interleave). Read back, the lines become ``checks.Execution``s, with
``overlapped`` set for an execution that began before an earlier one of the same job ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobq.chaos.checks import Execution

ENV = "JOBQ_CHAOS_LEDGER_FILE"


def _append(record: dict[str, object]) -> None:
    fd = os.open(os.environ[ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


@contextmanager
def execution(job_id: int, attempt: int, task: str) -> Iterator[None]:
    """Record one execution of ``job_id``: its start now, its end and outcome when the block
    ends ("stopped" when the worker cancelled it)."""
    key = {"job": job_id, "attempt": attempt, "pid": os.getpid(), "task": task}
    _append({**key, "start": time.time()})
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except asyncio.CancelledError:
        outcome = "stopped"
        raise
    finally:
        _append({**key, "end": time.time(), "outcome": outcome})


def read(path: Path) -> list[Execution]:
    """Every execution recorded in ``path``, in the order they started."""
    runs: dict[tuple[int, int, int], Execution] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            key = (r["job"], r["attempt"], r["pid"])
            if "start" in r:
                runs[key] = Execution(r["job"], r["attempt"], r["pid"], r["task"], r["start"],
                                      None, None, False)
            elif key in runs:
                runs[key].ended, runs[key].outcome = r["end"], r["outcome"]
    by_job: dict[int, list[Execution]] = defaultdict(list)
    for e in sorted(runs.values(), key=lambda e: e.started):
        earlier = by_job[e.job_id]
        e.overlapped = any(x.ended is None or x.ended > e.started for x in earlier)
        earlier.append(e)
    return sorted(runs.values(), key=lambda e: e.started)


def overlap_seconds(executions: list[Execution], now: float) -> float:
    """The longest time two executions of one job ran at once."""
    worst = 0.0
    by_job: dict[int, list[Execution]] = defaultdict(list)
    for e in executions:
        for x in by_job[e.job_id]:
            worst = max(worst, min(x.ended or now, e.ended or now) - max(x.started, e.started))
        by_job[e.job_id].append(e)
    return worst
