"""Run one job's handler and classify what happened into an Outcome. No SQL here."""

from __future__ import annotations

import asyncio
import json
import threading
import traceback
from collections.abc import Callable
from typing import Any

from jobq.registry import JobContext, Task
from jobq.types import Failure, Outcome, Success


def _run_in_daemon_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run a sync handler in its own daemon thread.

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one handler stuck
    in a blocking call would keep a stopping worker alive forever. A daemon thread that is
    still running when the worker has released its job simply dies with the process.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():  # cancelled meanwhile (lease lost or shutdown)
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop as the outcome
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=target, name=f"jobq-handler-{fn.__name__}", daemon=True).start()
    return future


async def execute(task: Task, payload: Any, ctx: JobContext) -> Outcome:
    """Call the handler; a return value is Success (it must be JSON), an exception is Failure.

    asyncio.CancelledError is not an outcome: it propagates, because it means the worker took
    the job away (lease lost, job cancelled, or shutdown past the grace period).
    """
    args = (payload, ctx) if task.wants_context else (payload,)
    try:
        if task.is_async:
            result = await task.fn(*args)
        else:
            result = await _run_in_daemon_thread(task.fn, *args)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every handler error is an outcome
        return Failure(
            error=f"{type(exc).__name__}: {exc}"[:4000],
            traceback="".join(traceback.format_exception(exc))[-20000:],
        )
    problem = json_problem(result)
    if problem is not None:
        return Failure(error=f"ResultNotJSON: the handler's return value {problem}", traceback="")
    return Success(result)


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored as JSON on both backends, or None when it can."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # lone surrogates fail here
    except (TypeError, ValueError) as exc:
        return f"is not JSON: {exc}"
    if "\x00" in text or "\\u0000" in text:
        return "contains a NUL character, which PostgreSQL cannot store"
    return None
