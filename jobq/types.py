"""Domain types: job states and their transitions, jobs, attempts, outcomes.

Job states, written once; everything else points here::

    pending   --claim-->                            running
    running   --handler returned-->                 done
    running   --handler raised, attempts left-->    pending  (run_at = now + backoff with jitter)
    running   --handler raised, attempts spent-->   failed   (error + traceback kept per attempt)
    running   --lease expired (rescue)-->           pending | failed
    running   --graceful stop, not finished-->      pending  (the attempt is not charged)
    pending   --cancel-->                           cancelled
    running   --cancel-->                           cancelled (the worker notices at its next
                                                               heartbeat and stops the handler)
    failed | cancelled --manual retry-->            pending

Every transition is one guarded statement in the store: it names the state it expects and, for a
running job, the fencing token (``lease_token``) of the claim. Zero rows changed means somebody
else got there first; the caller logs it and moves on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

#: The legal moves, as drawn above. The store's guarded statements implement exactly these.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.DONE, JobState.PENDING, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset({JobState.PENDING}),
    JobState.CANCELLED: frozenset({JobState.PENDING}),
}


class AttemptOutcome(str, enum.Enum):
    """What became of one attempt."""

    RUNNING = "running"  # still held by a worker
    DONE = "done"
    ERROR = "error"  # the handler raised
    LOST = "lost"  # the lease expired and the job was rescued
    RELEASED = "released"  # given back on graceful shutdown; not charged
    CANCELLED = "cancelled"  # the job was cancelled while it ran

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Attempt:
    id: int
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
    worker_id: str | None
    lease_token: str | None
    lease_expires_at: datetime | None
    result: Any
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempt_log: tuple[Attempt, ...] = field(default=())


@dataclass(frozen=True)
class NewJob:
    """A job to enqueue. ``run_at`` (absolute) or ``delay_seconds`` (from the database's now)."""

    task_type: str
    payload: Any = None
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    run_at: datetime | None = None
    delay_seconds: float | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Lease:
    """What a claim holds: which job, which attempt, and the fencing token that guards it."""

    job_id: int
    token: str
    attempt: int
    max_attempts: int


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


Outcome = Success | Failure


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    started_at: datetime
    last_heartbeat_at: datetime


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
