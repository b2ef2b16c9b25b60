"""The one API that the HTTP app, the CLI and Python callers use: enqueue, get, list, cancel,
retry, stats. It applies defaults and checks task names; the store does the rest."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jobq.registry import TaskRegistry, load_registry
from jobq.settings import Settings
from jobq.store import SqlStore, open_store
from jobq.types import EnqueueResult, Job, JobState, NewJob, Page, Stats


class JobService:
    def __init__(self, store: SqlStore, registry: TaskRegistry, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings

    @classmethod
    def from_settings(cls, settings: Settings) -> JobService:
        registry = load_registry(settings.tasks)
        return cls(open_store(settings), registry, settings)

    def close(self) -> None:
        self.store.dispose()

    def enqueue(
        self,
        task_type: str,
        payload: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay_seconds: float | None = None,
        idempotency_key: str | None = None,
    ) -> EnqueueResult:
        """Persist a job; it is durable when this returns.

        ``max_attempts`` defaults to the task's own, then to JOBQ_MAX_ATTEMPTS.
        Raises UnknownTask for a task_type that no registered handler has.
        """
        task = self.registry.get(task_type)
        if max_attempts is None:
            max_attempts = task.max_attempts or self.settings.max_attempts
        return self.store.enqueue(
            NewJob(
                task_type=task_type,
                payload=payload,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                run_at=run_at,
                delay_seconds=delay_seconds,
                idempotency_key=idempotency_key,
            )
        )

    def get(self, job_id: int) -> Job:
        return self.store.get(job_id)

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        return self.store.list_jobs(
            state=state, queue=queue, task_type=task_type, limit=limit, cursor=cursor
        )

    def cancel(self, job_id: int) -> Job:
        return self.store.cancel(job_id)

    def retry(self, job_id: int) -> Job:
        return self.store.retry(job_id)

    def stats(self) -> Stats:
        # A worker counts as live while its heartbeat is younger than two leases.
        return self.store.stats(live_worker_seconds=2 * self.settings.lease_seconds)

    def task_types(self) -> Sequence[str]:
        return self.registry.names()

    def ping(self) -> datetime:
        return self.store.ping()
