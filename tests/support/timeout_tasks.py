"""Tasks for tests/worker/test_timeouts.py, declared with @task in an importable module, as
process isolation needs (its child processes import this module)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from jobq import JobContext, JobTimeout, task


@task("to_async_sleep", max_attempts=2)
async def async_sleep(payload: dict[str, Any]) -> str:
    await asyncio.sleep(payload["seconds"])
    return "woke"


@task("to_thread_sleep", max_attempts=1)
def thread_sleep(payload: dict[str, Any], ctx: JobContext) -> str:
    # Does not look at ctx.stopped: a handler the worker can only abandon.
    time.sleep(payload["seconds"])
    Path(payload["marker"]).write_text("finished") if payload.get("marker") else None
    return "woke"


@task("to_polite", max_attempts=1, timeout_seconds=0.5)
def polite(payload: Any, ctx: JobContext) -> str:
    ctx.stopped.wait(30)  # returns as soon as the worker stops waiting
    return "stopped" if ctx.stopped.is_set() else "slept"


@task("to_process_sleep", max_attempts=1, isolation="process")
def process_sleep(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    Path(payload["pidfile"]).write_text(str(os.getpid()))
    ctx.progress(0.5, "in a child")
    time.sleep(payload["seconds"])
    return {"pid": os.getpid()}


@task("to_process_async", max_attempts=1, isolation="process")
async def process_async(payload: Any) -> int:
    return os.getpid()


@task("to_process_fail", max_attempts=1, isolation="process", discard_on=[KeyError])
def process_fail(payload: Any) -> None:
    raise KeyError("missing")


@task("to_process_exit", max_attempts=1, isolation="process")
def process_exit(payload: Any) -> None:
    os._exit(3)


@task("to_no_retry_on_timeout", max_attempts=3, discard_on=[JobTimeout], timeout_seconds=0.3)
async def no_retry(payload: Any) -> None:
    await asyncio.sleep(30)
