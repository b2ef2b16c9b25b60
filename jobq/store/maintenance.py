"""Housekeeping: the registry of live workers, and the retention of finished jobs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import ColumnElement, Connection, and_, delete, false, insert, or_, select

from jobq.store.base import StoreBase, translate
from jobq.store.exprs import db_now, seconds_from_now, try_maintenance_lock, unindexed
from jobq.store.tables import attempts, jobs, workers
from jobq.types import JobState, WorkerRegistration

FINISHED = [JobState.DONE.value, JobState.FAILED.value, JobState.CANCELLED.value]
FINISHED_OK = [JobState.DONE.value, JobState.CANCELLED.value]


class Maintenance(StoreBase):
    #: Most finished jobs one prune_finished call deletes (one short transaction).
    PRUNE_BATCH = 5000

    @translate
    def register_worker(
        self, worker_id: str, host: str, pid: int, queues: Sequence[str], concurrency: int
    ) -> None:
        with self.write() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))
            insert_worker(conn, WorkerRegistration(worker_id, host, pid, tuple(queues),
                                                   concurrency))

    @translate
    def deregister_worker(self, worker_id: str) -> None:
        with self.write() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))

    @translate
    def prune_workers(self, silent_seconds: float) -> int:
        """Forget workers that have not heartbeated for ``silent_seconds``."""
        with self.write() as conn:
            return conn.execute(
                delete(workers).where(
                    workers.c.last_heartbeat_at < seconds_from_now(-silent_seconds)
                )
            ).rowcount

    @translate
    def prune_finished(self, older_than_seconds: float, limit: int = PRUNE_BATCH, *,
                       keep_failed_for: float | None = None) -> int | None:
        """Delete up to ``limit`` jobs that finished (done, failed, cancelled) more than
        ``older_than_seconds`` ago, with their attempts, oldest first. ``keep_failed_for``:
        failed jobs (the dead letters, kept to be inspected and retried) only after that
        many seconds instead; either may be ``math.inf``, for never.

        Returns how many were deleted, or None when another process is pruning right now
        (PostgreSQL: a transaction-scoped advisory lock, so only one does at a time).
        """
        with self.write() as conn:
            if not conn.execute(select(try_maintenance_lock())).scalar():
                return None
            # Locked (SKIP LOCKED), so an operator's retry of one of them waits or is skipped
            # rather than having its job deleted under it.
            ids = conn.execute(
                select(jobs.c.id)
                # Without statistics SQLite would pick the (state, id) index, read every
                # finished job and sort them, on each prune, holding the write lock (about a
                # second with a million finished jobs); by finish time it reads only the ones
                # it deletes.
                .where(_prunable(older_than_seconds, keep_failed_for))
                .order_by(jobs.c.finished_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars().all()
            if not ids:
                return 0
            conn.execute(delete(attempts).where(attempts.c.job_id.in_(ids)))
            return conn.execute(
                delete(jobs).where(jobs.c.id.in_(ids), jobs.c.state.in_(FINISHED))
            ).rowcount


def _prunable(older_than: float, keep_failed_for: float | None) -> ColumnElement[bool]:
    state = unindexed(jobs.c.state)
    ages = ([(FINISHED, older_than)] if keep_failed_for is None else
            [(FINISHED_OK, older_than), ([JobState.FAILED.value], keep_failed_for)])
    finite = [(states, age) for states, age in ages if math.isfinite(age)]
    if not finite:
        return false()
    # The youngest bound alone first, which the finished-at index answers in its order;
    # then each state's own age.
    youngest = jobs.c.finished_at < seconds_from_now(-min(age for _, age in finite))
    if len(finite) == 1:
        return and_(state.in_(finite[0][0]), youngest)
    return and_(youngest, or_(*(
        and_(state.in_(states), jobs.c.finished_at < seconds_from_now(-age))
        for states, age in finite)))


def insert_worker(conn: Connection, reg: WorkerRegistration) -> None:
    conn.execute(
        insert(workers).values(
            id=reg.id, host=reg.host, pid=reg.pid, queues=list(reg.queues),
            concurrency=reg.concurrency, started_at=db_now(), last_heartbeat_at=db_now(),
        )
    )
