"""Run one job's handler and classify what happened into an Outcome. No SQL here.

Where a handler runs: an ``async def`` on the worker's event loop, a ``def`` on one of the
worker's threads (``threads.py``), and a task with ``isolation="process"`` in a child process
(``processes.py``), where it is classified the same way and its Outcome sent back.

A timeout (``timeout_of``: the job's ``timeout_seconds``, else its task's, else
JOBQ_TIMEOUT_SECONDS) is watched by the worker (``Slots.expire``, one loop for all jobs, not
a timer per job), which cancels the wait for the handler; the attempt ends as
``timed_out``'s Failure: an async handler is cancelled, a child process terminated (then
killed), and a thread, which nothing can stop, is abandoned with ``ctx.stopped`` set
(``threads.py`` counts it; the worker starts afresh past JOBQ_MAX_ABANDONED_THREADS).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from jobq import payloads
from jobq.errors import Cancel, JobTimeout, Snooze
from jobq.jsonvalue import check_json_value, storable_text
from jobq.registry import JobContext, StopFlag, Task, TaskRegistry
from jobq.retry import Backoff
from jobq.types import Cancelled, ClaimedJob, Failure, Job, Outcome, Parent, Snoozed, Success
from jobq.worker.processes import ProcessPool
from jobq.worker.threads import HandlerThreads

#: The threads of this process's sync handlers, and its child processes.
_threads = HandlerThreads()
_processes = ProcessPool()


def abandoned_threads() -> int:
    """How many handler threads of this process still run a job that was taken from them."""
    return _threads.abandoned()


async def execute(task: Task, payload: Any, ctx: JobContext, backoff: Backoff | None = None,
                  *, raw_payload: Any = None) -> Outcome:
    """The handler's Outcome. ``backoff`` is the worker's, for what the task leaves out
    (None: the completer's). ``raw_payload``: the payload as stored, which a child process
    parses again (process isolation).

    asyncio.CancelledError is not an outcome: it propagates, because it means the worker took
    the job away (lease lost, job cancelled, shutdown past the grace period) or stopped it at
    its timeout (``Slots.expire``; the fetcher then makes it ``timed_out``'s Failure).
    """
    if task.isolation == "process":
        return await _processes.run(task.fn.__module__, task.name, raw_payload, ctx, backoff)
    return await classified(task, payload, ctx, backoff)


def timeout_of(job: Job, registry: TaskRegistry, default: float | None) -> float | None:
    """How long one attempt of ``job`` may run: its own timeout, else its task's, else
    ``default`` (JOBQ_TIMEOUT_SECONDS; None or 0: none)."""
    if job.timeout_seconds:
        return job.timeout_seconds
    task = registry.find(job.task_type)  # unknown: it fails at once anyway
    return (task.timeout_seconds if task is not None else None) or default or None


def timed_out(claimed: ClaimedJob, registry: TaskRegistry, backoff: Backoff | None,
              seconds: float) -> Failure:
    """The Failure of an attempt stopped by its timeout: retried or not by the task's policy,
    as if the handler had raised JobTimeout."""
    exc = JobTimeout(seconds)
    task = registry.find(claimed.job.task_type)
    final = task is not None and not task.policy.retries(exc)
    delay = (None if final or backoff is None or task is None
             else task.policy.delay(claimed.lease.attempt, backoff))
    return Failure(error=f"JobTimeout: {exc}", traceback="", final=final, timed_out=True,
                   retry_delay=delay)


async def classified(task: Task, payload: Any, ctx: JobContext, backoff: Backoff | None,
                     *, inline: bool = False) -> Outcome:
    """Call the handler; a return value is Success (it must be JSON), ``Snooze`` is Snoozed,
    ``Cancel`` is Cancelled, any other exception is Failure: final when the task's policy
    says it does not retry, else with the delay of the task's backoff. ``inline``: a def runs
    on this thread (in a child process, which has nothing else to do)."""
    args = (payload, ctx) if task.wants_context else (payload,)
    policy = task.policy
    try:
        if task.is_async:
            result = await task.fn(*args)
        elif inline:
            result = task.fn(*args)
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
                      stopped: StopFlag, backoff: Backoff | None = None,
                      report: Callable[[float, str | None], None] | None = None,
                      parents: tuple[Parent, ...] = ()) -> Outcome:
    """A claimed job's Outcome: its handler run with its context. A task type this worker
    has no handler for is a Failure too (the job may be retried by a worker that has one)."""
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
        report=report, parents=parents,
    )
    return await execute(task, payload, ctx, backoff, raw_payload=job.payload)


def close_processes() -> None:
    """End the idle child processes of process-isolated tasks (when the worker stops)."""
    _processes.close()
