"""Tasks of the workflow tests (tests/worker/test_workflows_run.py, the workflow chaos
campaign's processes): each run of a callback is appended to JOBQ_TEST_LEDGER, when set."""

from __future__ import annotations

import os
import time
from typing import Any

from jobq import JobContext, task


def _ledger(line: str) -> None:
    path = os.environ.get("JOBQ_TEST_LEDGER")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


@task("fl_add", max_attempts=5)
def add(payload: dict[str, Any], ctx: JobContext) -> int:
    """Its payload's n plus the one parent's result (0 without a parent)."""
    return payload["n"] + (ctx.parent_result or 0)


@task("fl_member", max_attempts=1)
async def member(payload: dict[str, Any]) -> int:
    if payload.get("fail"):
        raise ValueError(f"member {payload['n']} fails")
    if payload.get("sleep"):
        time.sleep(payload["sleep"])
    return payload["n"]


@task("fl_chord", max_attempts=5)
def chord(payload: Any, ctx: JobContext) -> dict[str, Any]:
    _ledger(f"chord {ctx.job_id} {ctx.attempt}")
    states: dict[str, int] = {}
    for p in ctx.parents:
        states[p.state.value] = states.get(p.state.value, 0) + 1
    return {"parents": len(ctx.parents), "states": states,
            "sum": sum(r for r in ctx.parent_results.values() if isinstance(r, int))}
