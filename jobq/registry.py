"""Task handlers, looked up by name. A submitted name is only ever a key in this registry:
never imported, evaluated or unpickled."""

from __future__ import annotations

import importlib
import inspect
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from jobq import payloads
from jobq.errors import ConfigError, InvalidJob, UnknownTask
from jobq.retry import DEFAULT_MAX_SNOOZES, RetryPolicy, retry_policy
from jobq.schedules import InvalidSchedule, Schedule, make_schedule
from jobq.settings import NAME_PATTERN
from jobq.types import CONCURRENCY_RANGE, JobState, Parent, check_timeout


class StopFlag:
    """``ctx.stopped``: a ``threading.Event`` to its handler (``is_set``, ``wait``, ``set``),
    whose Event is only made when a handler waits on it. A worker makes one per job and
    almost no handler waits: an Event (its Condition and lock) was a twentieth of a no-op
    job's cost in the worker."""

    __slots__ = ("_set", "_event")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def set(self) -> None:
        self._set = True  # before reading _event: a waiter that made it after sees _set
        event = self._event
        if event is not None:
            event.set()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        with _MAKING:
            if self._event is None:
                self._event = threading.Event()
        if self._set:  # set before the Event existed: it would never be told
            self._event.set()
        return self._event.wait(timeout)


_MAKING = threading.Lock()


@dataclass(frozen=True)
class JobContext:
    """Handed to handlers that take a second parameter."""

    job_id: int
    attempt: int
    max_attempts: int
    queue: str
    task_type: str
    worker_id: str
    #: Set when the worker takes the job away: its lease was lost (rescued, cancelled, or
    #: not renewed in time) or the worker stops past its grace period. An async handler is
    #: cancelled then as well; a ``def`` handler cannot be interrupted, so a long one should
    #: look at this (``ctx.stopped.wait(seconds)`` in place of ``time.sleep``) and return.
    stopped: StopFlag = field(default_factory=StopFlag, compare=False, repr=False)
    #: Where ``progress`` reports go (the worker's ``jobq.worker.progress``); None: nowhere.
    report: Callable[[float, str | None], None] | None = field(default=None, compare=False,
                                                               repr=False)
    #: Its parents (``depends_on``), by id, as they ended: for a child in a workflow.
    parents: tuple[Parent, ...] = ()

    @property
    def parent_results(self) -> dict[int, Any]:
        """The results of its parents that are done, by job id."""
        return {p.id: p.result for p in self.parents if p.state is JobState.DONE}

    @property
    def parent_result(self) -> Any:
        """The result of its one parent (a step of ``jobq.chain``); None without parents.
        ValueError for a job with several (read ``parent_results``)."""
        if len(self.parents) > 1:
            raise ValueError("parent_result: this job has several parents; read "
                             "parent_results")
        return self.parents[0].result if self.parents else None

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Say how far the job is, ``fraction`` from 0 to 1, with an optional ``message``:
        shown by ``GET /jobs/{id}`` and waits. Cheap to call often, from a def or an async
        def handler: the worker writes at most one report per second per job, and the last
        one before the outcome. ValueError for a fraction outside 0..1."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
                0.0 <= fraction <= 1.0):  # NaN fails this too
            raise ValueError(f"progress: fraction must be a number from 0 to 1, not {fraction!r}")
        if message is not None and not isinstance(message, str):
            raise ValueError("progress: message must be a string or None")
        if self.report is not None:
            self.report(float(fraction), message)


@dataclass(frozen=True)
class Task:
    name: str
    fn: Callable[..., Any]
    max_attempts: int | None
    is_async: bool
    wants_context: bool
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: The pydantic model of its payload (``def send(payload: Email)``; jobq.payloads).
    payload_model: type[BaseModel] | None = None
    #: A serial lane per key: the key of a job from its payload (a function of it, or a
    #: fixed name), and how many with one key may run at once (store/limits.py).
    concurrency_key: Callable[[Any], Any] | str | None = None
    concurrency_limit: int | None = None
    #: How long one attempt may run (None: the worker's JOBQ_TIMEOUT_SECONDS); and where the
    #: handler runs: None (an async def on the worker's event loop, a def on a thread) or
    #: "process" (a child process, which a timeout or a cancel can really stop:
    #: jobq/worker/processes.py).
    timeout_seconds: float | None = None
    isolation: str | None = None


#: The values of ``isolation``.
ISOLATIONS = (None, "process")


def _wants_context(name: str, fn: Callable[..., Any]) -> bool:
    """Whether the handler takes (payload, ctx) rather than (payload).

    Checked at registration, so a handler that could not be called fails at start-up, not on
    every job.
    """
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    required_kw = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if required_kw:
        raise ValueError(f"task {name!r}: keyword-only parameters {required_kw} need defaults")
    if not positional and not varargs:
        raise ValueError(f"task {name!r}: the handler must take the payload as a parameter")
    required = [p for p in positional if p.default is p.empty]
    if len(required) > 2:
        raise ValueError(f"task {name!r}: a handler takes (payload) or (payload, ctx)")
    return len(positional) >= 2 or varargs


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._schedules: dict[str, Schedule] = {}

    def register(
        self, name: str, fn: Callable[..., Any], *, max_attempts: int | None = None,
        retry_on: Any = None, discard_on: Any = None, backoff_base: float | None = None,
        backoff_cap: float | None = None, backoff: Callable[[int], float] | None = None,
        max_snoozes: int = DEFAULT_MAX_SNOOZES,
        concurrency_key: Callable[[Any], Any] | str | None = None,
        concurrency_limit: int | None = None,
        timeout_seconds: float | None = None, isolation: str | None = None,
    ) -> Task:
        # fullmatch: with re.match, "$" also matches before a trailing newline ("name\n").
        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(f"task name {name!r} must match {NAME_PATTERN}")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if concurrency_limit is not None and (
                isinstance(concurrency_limit, bool) or not isinstance(concurrency_limit, int)
                or not 1 <= concurrency_limit <= CONCURRENCY_RANGE[1]):
            raise ValueError(f"task {name!r}: concurrency_limit must be an integer from 1 to "
                             f"{CONCURRENCY_RANGE[1]}")
        if concurrency_key is not None and not (callable(concurrency_key)
                                                or isinstance(concurrency_key, str)):
            raise ValueError(f"task {name!r}: concurrency_key must be a function of the "
                             "payload or a string")
        if timeout_seconds is not None:
            timeout_seconds = check_timeout(f"task {name!r}: timeout_seconds", timeout_seconds)
        if isolation not in ISOLATIONS:
            raise ValueError(f"task {name!r}: isolation must be None or 'process', not "
                             f"{isolation!r}")
        if isolation == "process" and getattr(fn, "__module__", "__main__") == "__main__":
            raise ValueError(f"task {name!r}: isolation='process' needs the handler in a "
                             "module the child processes can import, not in __main__")
        try:
            policy = retry_policy(retry_on, discard_on, backoff_base, backoff_cap, backoff,
                             max_snoozes)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"task {name!r}: {exc}") from None
        existing = self._tasks.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"task {name!r} is already registered to {existing.fn!r}")
        task = Task(
            name=name,
            fn=fn,
            max_attempts=max_attempts,
            is_async=inspect.iscoroutinefunction(fn),
            wants_context=_wants_context(name, fn),
            policy=policy,
            payload_model=payloads.payload_model(fn),
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
            timeout_seconds=timeout_seconds,
            isolation=isolation,
        )
        self._tasks[name] = task
        return task

    def get(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(name, list(self._tasks)) from None

    def find(self, name: str) -> Task | None:
        """The task of that name, or None."""
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def add_schedule(self, schedule: Schedule) -> None:
        """Declare a periodic job (``jobq.schedule``, ``@task(schedule=...)``). The same
        declaration twice (a module imported twice) is one; another under a taken name is
        an error."""
        existing = self._schedules.get(schedule.name)
        if existing is not None and existing != schedule:
            raise InvalidSchedule(f"schedule {schedule.name!r} is already declared (for task "
                             f"{existing.task_type!r}, {existing.expression!r}): give this "
                             "one a name of its own (name=...)")
        self._schedules[schedule.name] = schedule

    def schedules(self) -> list[Schedule]:
        """The declared schedules, by name."""
        return [self._schedules[n] for n in sorted(self._schedules)]

    def check_schedules(self) -> None:
        """Every schedule names a registered task (checked once the modules are imported,
        since a schedule may be declared before its task)."""
        unknown = [f"{s.name!r} (task {s.task_type!r})" for s in self._schedules.values()
                   if s.task_type not in self._tasks]
        if unknown:
            raise ConfigError(f"schedules of unknown tasks: {', '.join(unknown)}; known "
                              f"tasks: {', '.join(self.names())}")
        for s in self._schedules.values():
            try:
                payloads.checked(self._tasks[s.task_type].payload_model, s.payload)
            except InvalidJob as exc:
                raise ConfigError(f"schedule {s.name!r}: its payload does not fit task "
                                  f"{s.task_type!r}'s model: {exc}") from None


#: Where ``@task`` registers. Modules named in JOBQ_TASKS are imported so that their
#: decorators run; then the worker and the API read from here.
default_registry = TaskRegistry()


def task(
    name: str,
    *,
    max_attempts: int | None = None,
    # How its errors retry (jobq.retry.RetryPolicy).
    retry_on: Any = None,
    discard_on: Any = None,
    backoff_base: float | None = None,
    backoff_cap: float | None = None,
    backoff: Callable[[int], float] | None = None,
    max_snoozes: int = DEFAULT_MAX_SNOOZES,
    # A serial lane per key across the cluster (store/limits.py).
    concurrency_key: Callable[[Any], Any] | str | None = None,
    concurrency_limit: int | None = None,
    # How long an attempt may run, and where it runs (jobq/worker/executor.py).
    timeout_seconds: float | None = None,
    isolation: str | None = None,
    # A periodic job of this task (more, or with more options: ``jobq.schedule``).
    schedule: str | timedelta | None = None,
    every: timedelta | float | None = None,
    schedule_tz: str | None = None,
    schedule_payload: Any = None,
    catch_up: bool = False,
) -> Callable[[Callable[..., Any]], Any]:
    """Register a handler: ``@task("send_email", max_attempts=5)`` on a def or an async def.

    The handler receives the job's payload; a handler with a second parameter also receives a
    JobContext. Its return value (JSON) becomes the job's result; an exception fails the attempt.

    Retries, per task: ``retry_on`` (exception classes): only those errors retry, any other
    fails the job at once; ``discard_on``: those fail it at once (checked first).
    ``backoff_base``/``backoff_cap`` (seconds) replace the worker's, each on its own; or
    ``backoff(attempt) -> seconds`` replaces the formula. ``max_snoozes``: how many
    ``jobq.Snooze`` in a row a job may take (the next one fails it).

    ``concurrency_key=lambda p: p["account"]`` (or a fixed string) with
    ``concurrency_limit=1`` (the default with a key): at most that many of its jobs with one
    key run at once across the cluster, a serial lane per account; a job's own
    ``concurrency_key`` at enqueue replaces the task's.

    ``timeout_seconds``: an attempt running longer is stopped and ends with outcome
    ``timeout`` (retried or failed like an error); default the worker's JOBQ_TIMEOUT_SECONDS,
    and a job's own ``timeout_seconds`` replaces both. An async def is cancelled; a def
    cannot be: its thread is abandoned (``ctx.stopped`` is set, so a handler that looks at it
    can return). ``isolation="process"`` runs the handler in a child process instead, which a
    timeout (or a cancel of the running job) terminates, then kills after a grace period.

    ``schedule="*/5 * * * *"`` (cron, in ``schedule_tz``, default UTC) or
    ``schedule=timedelta(seconds=30)`` / ``every=30`` (an interval) also enqueues a job of
    it at every tick, with ``schedule_payload``, under the schedule name ``name``
    (see jobq.schedules).
    """
    periodic = _task_schedule(name, schedule, every, schedule_tz, schedule_payload, catch_up)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        default_registry.register(
            name, fn, max_attempts=max_attempts, retry_on=retry_on, discard_on=discard_on,
            backoff_base=backoff_base, backoff_cap=backoff_cap, backoff=backoff,
            max_snoozes=max_snoozes, concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit, timeout_seconds=timeout_seconds,
            isolation=isolation,
        )
        if periodic is not None:
            default_registry.add_schedule(periodic)
        return fn

    return decorate


def _task_schedule(name: str, schedule: str | timedelta | None, every: timedelta | float | None,
                   tz: str | None, payload: Any, catch_up: bool) -> Schedule | None:
    """``@task``'s schedule, checked when the decorator is written (at import)."""
    if schedule is not None and every is not None:
        raise InvalidSchedule(f"task {name!r}: give schedule= or every=, not both")
    given = schedule if schedule is not None else every
    if given is None:
        if tz is not None or payload is not None or catch_up:
            raise InvalidSchedule(f"task {name!r}: schedule_tz, schedule_payload and catch_up "
                             "need schedule= or every=")
        return None
    return make_schedule(name, given, name=name, tz=tz, payload=payload, catch_up=catch_up)


def load_registry(modules: Iterable[str]) -> TaskRegistry:
    """Import the operator's task modules (and the built-ins) and return the filled registry."""
    importlib.import_module("jobq.builtin_tasks")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"JOBQ_TASKS: cannot import task module {module!r}: {exc}") from exc
        except InvalidSchedule as exc:
            raise ConfigError(f"JOBQ_TASKS: task module {module!r}: {exc}") from exc
    default_registry.check_schedules()
    return default_registry
