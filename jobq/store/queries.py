"""Reads: one job, a page of jobs, the counts. Each with an optional ``queues=`` filter for a
caller that may see only some queues (an API key)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, bindparam, func, select

from jobq.errors import JobNotFound
from jobq.store.attempt_log import with_row_attempt
from jobq.store.base import StoreBase, translate
from jobq.store.exprs import db_now, has_tag, in_state, seconds_from_now
from jobq.store.rows import attempt_of, decode_cursor, encode_cursor, job_of, worker_of
from jobq.store.tables import attempts, jobs, workers
from jobq.types import Job, JobState, Page, Stats

PENDING = JobState.PENDING.value


class Queries(StoreBase):
    @translate
    def ping(self) -> datetime:
        """The database's clock; raises StoreUnavailable when it cannot be reached."""
        with self.read() as conn:
            return conn.execute(select(db_now())).scalar_one()

    @translate
    def get(self, job_id: int, *, with_attempts: bool = True,
            queues: Collection[str] | None = None) -> Job:
        """The job; with ``queues``, only if it is in one of them. A job of another queue is
        not found by the same one statement that finds no job at all, so neither its answer
        nor its time tells that it exists (ids are sequential; its attempts are not read)."""
        stmt = select(jobs).where(jobs.c.id == job_id)
        if queues is not None:
            stmt = stmt.where(jobs.c.queue.in_(sorted(queues)))
        with self.read() as conn:
            row = conn.execute(stmt).first()
            if row is None:
                raise JobNotFound(job_id)
            if not with_attempts:
                return job_of(row)
            log = [attempt_of(a) for a in conn.execute(
                select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.id)
            )]
            return job_of(row, with_row_attempt(row, log))  # see attempt_log

    @translate
    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        queues: Sequence[str] | None = None,
        tag: str | None = None,
    ) -> Page:
        """Newest first. ``cursor`` is the ``next_cursor`` of the previous page; ``queues``
        limits the page to jobs in any of them; ``tag`` to jobs with that tag."""
        stmt = _in(select(jobs), queues).order_by(jobs.c.id.desc()).limit(limit + 1)
        if state is not None:
            stmt = stmt.where(jobs.c.state == JobState(state).value)
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if task_type is not None:
            stmt = stmt.where(jobs.c.task_type == task_type)
        if tag is not None:
            stmt = stmt.where(has_tag(bindparam("tag", tag, type_=String)))
        if cursor is not None:
            stmt = stmt.where(jobs.c.id < decode_cursor(cursor))
        with self.read() as conn:
            rows = conn.execute(stmt).all()
        items = [job_of(r) for r in rows[:limit]]
        next_cursor = encode_cursor(items[-1].id) if len(rows) > limit and items else None
        return Page(items=items, next_cursor=next_cursor)

    @translate
    def highest_job_id(self) -> int:
        """The newest job's id (0 for none): how many jobs were ever enqueued, since ids are
        drawn in order and never reused (AUTOINCREMENT on SQLite). Pruning leaves it alone
        but when it deletes the newest job, a week after a queue's last enqueue; the count
        then falls, which Prometheus reads as a counter reset."""
        with self.read() as conn:
            return int(conn.execute(select(func.max(jobs.c.id))).scalar() or 0)

    @translate
    def stats(self, live_worker_seconds: float, *, queues: Sequence[str] | None = None) -> Stats:
        """Jobs per state and queue, the live workers, the age of the oldest due job, and the
        jobs finished in the last minute. With ``queues``: of those queues only (each listed,
        with zeros when it has no jobs), and the live workers that serve one of them, each
        listed with those of its queues only."""
        with self.read() as conn:
            counts = conn.execute(
                _in(select(jobs.c.queue, jobs.c.state, func.count()), queues)
                .group_by(jobs.c.queue, jobs.c.state)
            ).all()
            oldest = conn.execute(_in(select(func.min(jobs.c.run_at)), queues).where(
                in_state(PENDING), jobs.c.run_at <= db_now()
            )).scalar()
            now = conn.execute(select(db_now())).scalar_one()
            finished = conn.execute(_in(select(func.count()), queues).where(
                jobs.c.finished_at >= seconds_from_now(-60)
            )).scalar_one()
            worker_rows = conn.execute(
                select(workers)
                .where(workers.c.last_heartbeat_at >= seconds_from_now(-live_worker_seconds))
                .order_by(workers.c.started_at)
            ).all()
        totals = {s.value: 0 for s in JobState}
        per_queue = {q: {s.value: 0 for s in JobState} for q in queues or ()}
        for queue, state, n in counts:
            totals[state] = totals.get(state, 0) + n
            per_queue.setdefault(queue, {s.value: 0 for s in JobState})[state] = n
        return Stats(
            jobs=totals,
            queues=dict(sorted(per_queue.items())),
            workers=_live(worker_rows, queues),
            oldest_pending_age_seconds=(
                max((now - oldest).total_seconds(), 0.0) if oldest is not None else None
            ),
            finished_last_minute=finished,
        )


def _in(stmt: Select[Any], queues: Sequence[str] | None) -> Select[Any]:
    return stmt if queues is None else stmt.where(jobs.c.queue.in_(list(queues)))


def _live(rows: Sequence[Any], queues: Sequence[str] | None) -> list[Any]:
    if queues is None:
        return [worker_of(w) for w in rows]
    # Workers' queue lists are JSON, so they are matched here rather than in SQL.
    shared = ((w, [q for q in w.queues if q in queues]) for w in rows)
    return [worker_of(w, qs) for w, qs in shared if qs]
