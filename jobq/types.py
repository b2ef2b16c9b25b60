"""Domain types: job states and their transitions, jobs, attempts, outcomes.

Job states, written once; everything else points here::

    pending   --claim-->                            running
    running   --handler returned-->                 done
    running   --handler raised, attempts left-->    pending  (run_at = now + backoff with jitter)
    running   --handler raised, attempts spent-->   failed   (error + traceback kept per attempt)
    running   --handler raised, not retryable-->    failed   (discard_on, or not in retry_on:
                                                              at once, attempts left or not)
    running   --handler raised Snooze(s)-->         pending  (run_at = now + s; the attempt is
                                                              not charged; past max_snoozes
                                                              snoozes in a row: failed)
    running   --handler raised Cancel(reason)-->    cancelled (the reason kept as last_error)
    running   --lease expired (rescue)-->           pending | failed
    running   --graceful stop, not finished-->      pending  (the attempt is not charged)
    pending   --cancel-->                           cancelled
    running   --cancel-->                           cancelled (the worker notices at its next
                                                               heartbeat and stops the handler)
    failed | cancelled --manual retry-->            pending  (waiting while a parent is not done)
    waiting   --its last parent done-->             pending  (in that completion's transaction)
    waiting   --a parent failed or cancelled-->     cancelled (its dependents too, transitively;
                                                              with on_parent_failure="run" the
                                                              parent counts as finished)
    waiting   --cancel-->                           cancelled

A job enqueued with ``depends_on`` parents starts ``waiting`` (not claimable; the claim index
holds pending jobs only) until every parent is ``done`` (``jobq.store.workflows``). A manual
retry of a parent also brings back the dependents its end had cancelled.

Every transition is one guarded statement in the store: it names the state it expects and, for a
running job, the fencing token (``lease_token``) of the claim. Zero rows changed means somebody
else got there first; the caller logs it and moves on.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from jobq.errors import InvalidJob
from jobq.jsonvalue import check_json_value, text_problem

#: Task, queue and worker-facing names: letters, digits and ``_ . : -``, at most 128.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
PRIORITY_RANGE = (-1000, 1000)  # higher runs first
MAX_ATTEMPTS_RANGE = (1, 1000)
#: A concurrency limit (of a queue, or of a key's jobs) across the cluster.
CONCURRENCY_RANGE = (1, 100_000)
MAX_DELAY_SECONDS = 366 * 86400
#: Earliest and latest ``run_at``, in UTC. SQLite keeps times as float Unix seconds, whose
#: rounding near the ends of Python's datetime range (years 1 and 9999) can land outside it, so
#: a day of margin on each side; PostgreSQL's timestamptz holds the whole range.
RUN_AT_RANGE = (
    datetime(1, 1, 2, tzinfo=timezone.utc),
    datetime(9999, 12, 30, tzinfo=timezone.utc),
)


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Enqueued with parents (``depends_on``) not all done yet (migration 0013).
    WAITING = "waiting"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


class AttemptOutcome(str, enum.Enum):
    """What became of one attempt."""

    RUNNING = "running"  # still held by a worker
    DONE = "done"
    ERROR = "error"  # the handler raised
    LOST = "lost"  # the lease expired and the job was rescued
    #: Given back without charging the attempt: on graceful shutdown, or snoozed by the
    #: handler (``raise jobq.Snooze(s)``; then ``error`` says ``snoozed: ...``). The schema's
    #: CHECK constraint on the outcome (migration 0001) allows no new value without a
    #: migration, and an older jobq reading the log would not know one.
    RELEASED = "released"
    CANCELLED = "cancelled"  # the job was cancelled while it ran, or by its handler (Cancel)
    #: The handler ran past its timeout and was stopped (migration 0011); retried or failed
    #: like an error.
    TIMEOUT = "timeout"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Attempt:
    """One attempt of a job. An attempt that ends without success is written to the attempts
    table; the one still running (the job's lease) and the one that succeeded (the done row)
    are the job's own row, shown with ``id`` None."""

    id: int | None
    job_id: int
    attempt: int
    worker_id: str
    started_at: datetime
    finished_at: datetime | None
    outcome: AttemptOutcome
    error: str | None
    traceback: str | None


@dataclass(frozen=True)
class Job:
    id: int
    task_type: str
    payload: Any
    queue: str
    priority: int
    state: JobState
    attempts: int
    max_attempts: int
    run_at: datetime
    idempotency_key: str | None
    worker_id: str | None  # the lease holder while running; once done, who ran it
    lease_token: str | None
    lease_expires_at: datetime | None
    result: Any
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # A unique job's key (migration 0007): while this job is pending or running, or for
    # ``unique_for`` seconds after it finished, an enqueue with the key in its queue gets it.
    unique_key: str | None = None
    unique_for: float | None = None
    # A serial lane (migration 0009): at most ``concurrency_limit`` running with this key.
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    # Tags and metadata given at enqueue, and the handler's last progress report
    # (migration 0010): written by the lease holder, throttled (``jobq.worker.progress``).
    tags: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    progress: float | None = None
    progress_message: str | None = None
    progress_at: datetime | None = None
    #: Its own timeout (migration 0011); None: its task's, else the worker's default.
    timeout_seconds: float | None = None
    # The trace context of whoever enqueued it (migration 0012, ``jobq.tracing``): W3C
    # traceparent (and tracestate) as JSON; its run's span continues that trace.
    trace_context: str | None = None
    # Workflows (migration 0013, ``jobq.store.workflows``): how many parents are not done yet
    # (None: it has no parents); whether its end must be acted on in that transaction (it has
    # dependents or a callback_url); "run" to run even when a parent failed; the parent whose
    # end cancelled it; where its end is POSTed.
    parents_left: int | None = None
    on_final: bool | None = None
    on_parent_failure: str | None = None
    cancelled_by: int | None = None
    callback_url: str | None = None
    attempt_log: tuple[Attempt, ...] = field(default=())


@dataclass(frozen=True)
class Parent:
    """A parent of a job, as its handler sees it (``ctx.parents``)."""

    id: int
    task_type: str
    state: JobState
    result: Any  # what it returned, when done
    error: str | None  # its last error, when it failed or was cancelled


@dataclass(frozen=True)
class NewJob:
    """A job to enqueue. ``run_at`` (absolute) or ``delay_seconds`` (from the database's now).

    Checked on construction, so that no caller (API, CLI or Python) can hand the store a job
    that a backend would refuse half-way, or that would break every later claim: raises
    InvalidJob naming the field.
    """

    task_type: str
    payload: Any = None
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    run_at: datetime | None = None
    delay_seconds: float | None = None
    idempotency_key: str | None = None
    unique_key: str | None = None
    unique_for: float | None = None
    #: At most ``concurrency_limit`` jobs with this key run at once, across the cluster.
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    tags: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None
    #: How long one attempt may run before it is stopped (outcome ``timeout``); None: the
    #: task's ``timeout_seconds``, else the worker's JOBQ_TIMEOUT_SECONDS.
    timeout_seconds: float | None = None
    #: The enqueuer's trace context (``jobq.tracing.current_context``); None: none.
    trace_context: str | None = None
    #: Its parents: ids of existing jobs, and (in a batch) indexes of earlier items. It waits
    #: until all are done; when one fails or is cancelled it is cancelled too, unless
    #: ``on_parent_failure`` is "run" (then a parent's end, whatever it is, counts).
    depends_on: tuple[int, ...] = ()
    depends_on_items: tuple[int, ...] = ()
    on_parent_failure: str | None = None
    #: An http(s) URL that is POSTed the job's end (``jobq.webhooks``).
    callback_url: str | None = None

    def __post_init__(self) -> None:
        for name, value in (("task_type", self.task_type), ("queue", self.queue)):
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise InvalidJob(name, f"must match {NAME_PATTERN}")
        _in_range("priority", self.priority, *PRIORITY_RANGE)
        _in_range("max_attempts", self.max_attempts, *MAX_ATTEMPTS_RANGE)
        if self.run_at is not None:
            utc_run_at(self.run_at)
        if self.delay_seconds is not None:
            if self.run_at is not None:
                raise InvalidJob("delay_seconds", "give run_at or delay_seconds, not both")
            d = self.delay_seconds
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not (
                math.isfinite(d) and 0 <= d <= MAX_DELAY_SECONDS
            ):
                raise InvalidJob("delay_seconds", f"must be a number from 0 to {MAX_DELAY_SECONDS}")
        if self.idempotency_key is not None:
            key = self.idempotency_key
            why = text_problem(key) if isinstance(key, str) else "must be a string"
            if why is None and not 1 <= len(key) <= 255:
                why = "must be 1 to 255 characters long"
            if why:
                raise InvalidJob("idempotency_key", why)
        if self.unique_key is not None:
            key = self.unique_key
            why = text_problem(key) if isinstance(key, str) else "must be a string"
            if why is None and not 1 <= len(key) <= 255:
                why = "must be 1 to 255 characters long"
            if why:
                raise InvalidJob("unique_key", why)
        if self.unique_for is not None:
            if self.unique_key is None:
                raise InvalidJob("unique_for", "needs a unique_key")
            u = self.unique_for
            if isinstance(u, bool) or not isinstance(u, (int, float)) or not (
                math.isfinite(u) and 0 <= u <= MAX_DELAY_SECONDS
            ):
                raise InvalidJob("unique_for", f"must be a number from 0 to {MAX_DELAY_SECONDS}")
        if self.concurrency_key is not None:
            key = self.concurrency_key
            why = text_problem(key) if isinstance(key, str) else "must be a string"
            if why is None and not 1 <= len(key) <= 255:
                why = "must be 1 to 255 characters long"
            if why:
                raise InvalidJob("concurrency_key", why)
            if self.concurrency_limit is None:
                raise InvalidJob("concurrency_limit", "a concurrency_key needs a limit")
            _in_range("concurrency_limit", self.concurrency_limit, *CONCURRENCY_RANGE)
        elif self.concurrency_limit is not None:
            raise InvalidJob("concurrency_limit", "needs a concurrency_key")
        if self.timeout_seconds is not None:
            check_timeout("timeout_seconds", self.timeout_seconds, InvalidJob)
        try:
            check_json_value(self.payload)
        except ValueError as exc:
            raise InvalidJob("payload", str(exc)) from None
        if self.tags != () or self.meta is not None:
            _check_tags_and_meta(self)
        if self.depends_on or self.depends_on_items or self.on_parent_failure is not None:
            _check_parents(self)
        if self.callback_url is not None:
            url = self.callback_url
            why = text_problem(url) if isinstance(url, str) else "must be a string"
            if why is None and not 1 <= len(url) <= MAX_URL_CHARS:
                why = f"must be 1 to {MAX_URL_CHARS} characters long"
            if why:
                raise InvalidJob("callback_url", why)
        if self.trace_context is not None:
            tc = self.trace_context
            why = text_problem(tc) if isinstance(tc, str) else "must be a string"
            if why is None and not 1 <= len(tc) <= TRACE_CONTEXT_CHARS:
                why = f"must be 1 to {TRACE_CONTEXT_CHARS} characters long"
            if why:
                raise InvalidJob("trace_context", why)


#: Most parents of one job (a fan-in of that many), and the longest callback URL.
MAX_PARENTS = 10_000
MAX_URL_CHARS = 2000
ON_PARENT_FAILURE = ("cancel", "run")


def _check_parents(new: NewJob) -> None:
    """NewJob's ``depends_on`` (job ids) and ``depends_on_items`` (batch indexes): tuples of
    distinct positive integers, at most MAX_PARENTS in all."""
    for name in ("depends_on", "depends_on_items"):
        given = getattr(new, name)
        if isinstance(given, (str, bytes)) or not isinstance(given, (list, tuple)):
            raise InvalidJob(name, "must be a list of integers")
        ids = tuple(given)
        low = 1 if name == "depends_on" else 0
        if any(isinstance(i, bool) or not isinstance(i, int) or not low <= i < 2**63
               for i in ids):
            raise InvalidJob(name, f"must hold integers of at least {low}")
        object.__setattr__(new, name, tuple(dict.fromkeys(ids)))
    if len(new.depends_on) + len(new.depends_on_items) > MAX_PARENTS:
        raise InvalidJob("depends_on", f"at most {MAX_PARENTS} parents")
    if new.on_parent_failure is not None:
        if new.on_parent_failure not in ON_PARENT_FAILURE:
            raise InvalidJob("on_parent_failure", "must be 'cancel' or 'run'")
        if not (new.depends_on or new.depends_on_items):
            raise InvalidJob("on_parent_failure", "needs depends_on")


#: The longest timeout of one attempt: a week. Work that takes longer should be split into
#: jobs (or checkpoint with progress and snooze), not bet on one attempt.
MAX_TIMEOUT_SECONDS = 7 * 86400.0


def check_timeout(name: str, value: Any, error: Any = None) -> float:
    """A timeout in seconds: a number above 0 and at most MAX_TIMEOUT_SECONDS. Raises
    ``error(name, why)`` (InvalidJob for a job's, ValueError for a task's)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0 < value <= MAX_TIMEOUT_SECONDS):
        why = f"must be a number above 0 and at most {MAX_TIMEOUT_SECONDS:.0f} (seconds)"
        if error is None:
            raise ValueError(f"{name} {why}")
        raise error(name, why)
    return float(value)


#: At most this many tags per job, each a NAME_PATTERN name; ``meta`` at most this many bytes
#: of JSON. Both are for finding and labelling jobs, not for data: that is the payload.
MAX_TAGS = 10
MAX_META_BYTES = 4096
#: A progress report's message is cut to this many characters.
PROGRESS_MESSAGE_CHARS = 500
#: Most characters of a job's stored trace context (``jobq.tracing``).
TRACE_CONTEXT_CHARS = 512


def _check_tags_and_meta(new: NewJob) -> None:
    """NewJob's ``tags`` (kept as a tuple without repeats, in the order given) and ``meta``
    (a JSON object of at most MAX_META_BYTES)."""
    tags = new.tags
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise InvalidJob("tags", "must be a list of names")
    if not all(isinstance(t, str) and _NAME.fullmatch(t) for t in tags):
        raise InvalidJob("tags", f"each tag must match {NAME_PATTERN}")
    unique = tuple(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise InvalidJob("tags", f"at most {MAX_TAGS} tags")
    object.__setattr__(new, "tags", unique)
    meta = new.meta
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise InvalidJob("meta", "must be a JSON object")
    try:
        check_json_value(meta, name="meta")
    except ValueError as exc:
        raise InvalidJob("meta", str(exc)) from None
    if len(json.dumps(meta, ensure_ascii=False).encode()) > MAX_META_BYTES:
        raise InvalidJob("meta", f"at most {MAX_META_BYTES} bytes of JSON")


def utc_run_at(value: object) -> datetime:
    """``value`` as an aware UTC datetime (naive means UTC); InvalidJob when it cannot be one."""
    low, high = RUN_AT_RANGE
    why = f"must be a datetime from {low.isoformat()} to {high.isoformat()}"
    if not isinstance(value, datetime):
        raise InvalidJob("run_at", why)
    try:
        utc = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else (
            value.astimezone(timezone.utc)
        )
    except (OverflowError, ValueError):
        raise InvalidJob("run_at", why) from None
    if not low <= utc <= high:
        raise InvalidJob("run_at", why)
    return utc


def _in_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJob(name, f"must be an integer from {low} to {high}")


@dataclass(frozen=True)
class Lease:
    """What a claim holds: which job, which attempt, and the fencing token that guards it."""

    job_id: int
    token: str
    attempt: int
    max_attempts: int
    worker_id: str  # who holds it: its attempt is recorded under this worker when it ends


@dataclass(frozen=True)
class ClaimedJob:
    job: Job
    lease: Lease


@dataclass(frozen=True)
class Success:
    result: Any


@dataclass(frozen=True)
class Failure:
    error: str
    traceback: str
    #: Not to be retried, attempts left or not (the task's ``discard_on``, or an error not in
    #: its ``retry_on``).
    final: bool = False
    #: Seconds before the retry, from the task's backoff; None: the worker's default backoff.
    retry_delay: float | None = None
    #: The attempt ran past its timeout and was stopped (its outcome: ``timeout``).
    timed_out: bool = False


@dataclass(frozen=True)
class Snoozed:
    """The handler raised ``Snooze(seconds)``: run again after ``seconds``, uncharged; unless
    the job was snoozed ``max_snoozes`` times in a row already, which fails it."""

    seconds: float
    max_snoozes: int


@dataclass(frozen=True)
class Cancelled:
    """The handler raised ``Cancel(reason)``: the job ends now, ``cancelled``."""

    reason: str


Outcome = Success | Failure | Snoozed | Cancelled


@dataclass(frozen=True)
class WorkerRegistration:
    """What a worker says about itself when it registers."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    started_at: datetime
    last_heartbeat_at: datetime


@dataclass(frozen=True)
class QueueInfo:
    """A queue: its jobs by state (every state, zero when none), and whether it is paused."""

    name: str
    paused: bool
    paused_at: datetime | None
    jobs: dict[str, int]
    #: Limits across the cluster (``store/limits.py``): most running at once, and starts per
    #: second with their burst; None: no such limit.
    concurrency: int | None = None
    rate: float | None = None
    burst: int | None = None


@dataclass(frozen=True)
class Stats:
    jobs: dict[str, int]
    queues: dict[str, dict[str, int]]
    workers: list[WorkerInfo]
    oldest_pending_age_seconds: float | None
    finished_last_minute: int


@dataclass(frozen=True)
class Page:
    items: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class EnqueueResult:
    job: Job
    created: bool  # False when an identical request with the same idempotency key existed
