"""Run one job's handler and classify what happened into an Outcome. No SQL here."""

from __future__ import annotations

import asyncio
import threading
import traceback
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from jobq import payloads
from jobq.errors import Cancel, Snooze
from jobq.jsonvalue import check_json_value, storable_text
from jobq.registry import JobContext, Task, TaskRegistry
from jobq.retry import Backoff
from jobq.types import Cancelled, ClaimedJob, Failure, Outcome, Snoozed, Success
from jobq.worker.threads import HandlerThreads

#: The threads of this process's sync handlers.
_threads = HandlerThreads()


async def execute(task: Task, payload: Any, ctx: JobContext,
                  backoff: Backoff | None = None) -> Outcome:
    """Call the handler; a return value is Success (it must be JSON), ``Snooze`` is Snoozed,
    ``Cancel`` is Cancelled, any other exception is Failure: final when the task's policy
    says it does not retry, else with the delay of the task's backoff (``backoff`` is the
    worker's, for what the task leaves out; None: the completer's).

    asyncio.CancelledError is not an outcome: it propagates, because it means the worker took
    the job away (lease lost, job cancelled, or shutdown past the grace period).
    """
    args = (payload, ctx) if task.wants_context else (payload,)
    policy = task.policy
    try:
        if task.is_async:
            result = await task.fn(*args)
        else:
            result = await _threads.run(task.fn, *args)
    except asyncio.CancelledError:
        raise
    except Snooze as exc:
        return Snoozed(exc.seconds, policy.max_snoozes)
    except Cancel as exc:
        return Cancelled(storable_text(exc.reason[:4000]))
    except Exception as exc:  # noqa: BLE001 - every handler error is an outcome
        final = not policy.retries(exc)
        return Failure(
            error=storable_text(f"{type(exc).__name__}: {exc}"[:4000]),
            traceback=storable_text("".join(traceback.format_exception(exc))[-20000:]),
            final=final,
            retry_delay=(None if final or backoff is None
                         else policy.delay(ctx.attempt, backoff)),
        )
    try:
        check_json_value(result, name="result")
    except ValueError as exc:
        return Failure(error=f"ResultNotJSON: the handler's return value is not storable: {exc}",
                       traceback="")
    return Success(result)


async def run_claimed(claimed: ClaimedJob, registry: TaskRegistry, worker_id: str,
                      stopped: threading.Event, backoff: Backoff | None = None,
                      report: Callable[[float, str | None], None] | None = None) -> Outcome:
    """A claimed job's Outcome: its handler run with its context. A task type this worker has
    no handler for is a Failure too (the job may be retried by a worker that has one)."""
    job, lease = claimed.job, claimed.lease
    try:
        task = registry.get(job.task_type)
    except Exception as exc:  # noqa: BLE001 - unknown here: a worker without that handler
        return Failure(f"{type(exc).__name__}: {exc}", "")
    try:
        payload = payloads.parsed(task.payload_model, job.payload)
    except ValidationError as exc:  # stored before its model changed: no attempt would fit
        return Failure(f"InvalidPayload: the payload no longer fits the task's model: {exc}"
                       [:4000], "", final=True)
    ctx = JobContext(
        job_id=job.id, attempt=lease.attempt, max_attempts=lease.max_attempts,
        queue=job.queue, task_type=job.task_type, worker_id=worker_id, stopped=stopped,
        report=report,
    )
    return await execute(task, payload, ctx, backoff)
