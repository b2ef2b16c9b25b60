"""Reads for the dashboard (jobq/dashboard/): the last hour's finished jobs per minute, and
the oldest job waiting to run. Kept here so that the SQL stays in the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Integer

from jobq.store.base import StoreBase, translate
from jobq.store.exprs import db_now, in_state, seconds_from_now
from jobq.store.rows import job_of
from jobq.store.tables import jobs
from jobq.types import Job, JobState

DONE, FAILED, PENDING = JobState.DONE.value, JobState.FAILED.value, JobState.PENDING.value


class minutes_ago(FunctionElement[Any]):
    """Whole minutes between a timestamp column and the database's clock (0: this minute)."""

    type = Integer()
    inherit_cache = True


@compiles(minutes_ago, "postgresql")
def _ago_pg(element: minutes_ago, compiler: Any, **kw: Any) -> str:
    (col,) = element.clauses
    return f"CAST(floor(extract(epoch FROM (now() - {compiler.process(col, **kw)})) / 60) AS integer)"


@compiles(minutes_ago, "sqlite")
def _ago_sqlite(element: minutes_ago, compiler: Any, **kw: Any) -> str:
    # Timestamps are REAL Unix seconds on SQLite (tables.Timestamp); the difference is >= 0
    # for finished jobs, so CAST's truncation is floor.
    (col,) = element.clauses
    return (f"CAST((((julianday('now') - 2440587.5) * 86400.0) - {compiler.process(col, **kw)})"
            " / 60 AS integer)")


class DashboardReads(StoreBase):
    @translate
    def throughput(self, minutes: int = 60, *, queues: Sequence[str] | None = None
                   ) -> list[tuple[int, int]]:
        """Jobs that became done and failed in each of the last ``minutes`` minutes, oldest
        minute first: ``[(done, failed), ...]``. One grouped read over the finished_at index."""
        ago = minutes_ago(jobs.c.finished_at)
        stmt = (select(ago, jobs.c.state, func.count())
                .where(jobs.c.finished_at >= seconds_from_now(-60.0 * minutes),
                       jobs.c.state.in_((DONE, FAILED)))
                .group_by(ago, jobs.c.state))
        if queues is not None:
            stmt = stmt.where(jobs.c.queue.in_(list(queues)))
        with self.read() as conn:
            rows = conn.execute(stmt).all()
        buckets = [[0, 0] for _ in range(minutes)]
        for minute, state, n in rows:
            if minute is not None and 0 <= minute < minutes:
                buckets[minutes - 1 - minute][0 if state == DONE else 1] += n
        return [(d, f) for d, f in buckets]

    @translate
    def oldest_waiting(self, *, queues: Sequence[str] | None = None) -> Job | None:
        """The pending job that has been due the longest, or None."""
        stmt = (select(jobs).where(in_state(PENDING), jobs.c.run_at <= db_now())
                .order_by(jobs.c.run_at, jobs.c.id).limit(1))
        if queues is not None:
            stmt = stmt.where(jobs.c.queue.in_(list(queues)))
        with self.read() as conn:
            row = conn.execute(stmt).first()
        return job_of(row) if row is not None else None
