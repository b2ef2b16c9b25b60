"""Task handlers used by the chaos campaigns (JOBQ_TASKS=jobq.chaos.tasks)."""

from __future__ import annotations

import asyncio
import os
import select
import signal
from typing import Any

from jobq.chaos import fileledger, ledger
from jobq.registry import JobContext, task


def _ms(payload: Any, key: str = "ms") -> float:
    return float(payload.get(key, 0)) / 1000 if isinstance(payload, dict) else 0.0


def _pause(seconds: float) -> None:
    # Not time.sleep: under libfaketime (campaign 10) its clock_nanosleep fails with EINVAL.
    if seconds > 0:
        select.select([], [], [], seconds)


@task("chaos.work")
def work(payload: Any, ctx: JobContext) -> Any:
    """Sleep payload["ms"] milliseconds inside a ledger execution."""
    with ledger.execution(ctx.job_id, ctx.attempt, "chaos.work"):
        _pause(_ms(payload))
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@task("chaos.poison")
def poison(payload: Any, ctx: JobContext) -> Any:
    """Kill the worker process that runs it."""
    with ledger.execution(ctx.job_id, ctx.attempt, "chaos.poison"):
        os.kill(os.getpid(), signal.SIGKILL)
    return None  # never reached


class DownstreamDown(RuntimeError):
    pass


@task("chaos.flaky")
def flaky(payload: Any, ctx: JobContext) -> Any:
    """Fail while the "downstream" switch is on (a retry storm), succeed after."""
    with ledger.execution(ctx.job_id, ctx.attempt, "chaos.flaky"):
        if ledger.switched("downstream"):
            raise DownstreamDown("downstream unavailable")
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@task("chaos.nap")
async def nap(payload: Any, ctx: JobContext) -> Any:
    """Await payload["ms"] milliseconds, recorded in the file ledger: a handler that the
    worker can stop (an async one), and a record that a host cut off from every database can
    still write."""
    with fileledger.execution(ctx.job_id, ctx.attempt, "chaos.nap"):
        await asyncio.sleep(_ms(payload))
    return {"pid": os.getpid(), "attempt": ctx.attempt}
