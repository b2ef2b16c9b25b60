"""Tasks of `jobq bench` (loaded with ``JOBQ_TASKS=jobq.bench.tasks``).

Both are async, so that a drain measures the queue (claim, start, record the outcome) and not
a thread hop per job.
"""

from __future__ import annotations

import time
from typing import Any

from jobq.registry import task


@task("bench_noop", max_attempts=1)
async def bench_noop(payload: Any) -> None:
    """Does nothing: what is left of a job's cost is the queue's own."""
    return None


@task("bench_stamp", max_attempts=1)
async def bench_stamp(payload: Any) -> float:
    """Returns the wall-clock time at which its handler started (Unix seconds); the bench
    compares it with the time the enqueue call returned in the client, on the same machine."""
    return time.time()
