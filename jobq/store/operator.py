"""An operator's transitions: cancel and retry, of one job or in bulk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, exists, func, or_, select, update
from sqlalchemy import exc as sa_exc

from jobq.errors import InvalidTransition, JobNotFound
from jobq.store import attempt_log, workflows
from jobq.store.base import StoreBase, translate
from jobq.store.exprs import NO_LEASE, db_now
from jobq.store.rows import job_of
from jobq.store.tables import jobs
from jobq.types import AttemptOutcome, Job, JobState

PENDING, RUNNING = JobState.PENDING.value, JobState.RUNNING.value
FAILED, CANCELLED = JobState.FAILED.value, JobState.CANCELLED.value
WAITING = JobState.WAITING.value
CANCELLABLE = (PENDING, RUNNING, WAITING)

#: Another row of the jobs table, for "another job holds this unique key".
_other = jobs.alias("other")


class Operator(StoreBase):
    @translate
    def cancel(self, job_id: int) -> Job:
        """pending | running → cancelled. Cancelling a cancelled job is a no-op. A running
        job's holder finds its lease gone at its next heartbeat and stops the handler."""
        with self.write() as conn:
            # Locked first, so that a running job's lease, read here, is the one cancelled:
            # it becomes the attempt recorded as cancelled.
            before = conn.execute(
                select(jobs).where(jobs.c.id == job_id).with_for_update()
            ).first()
            row = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_(CANCELLABLE))
                .values(state=CANCELLED, finished_at=db_now(), **NO_LEASE)
                .returning(*jobs.c)
            ).first()
            if row is not None:
                if before is not None and before.state == RUNNING:
                    attempt_log.record(conn, self.dialect, [attempt_log.of_row(before)],
                                       AttemptOutcome.CANCELLED)
                workflows.ended(self, conn, [job_id])
                self.dialect.finished(conn, [job_id])
                return job_of(row)
            row = before
        if row is None:
            raise JobNotFound(job_id)
        if row.state == CANCELLED:
            return job_of(row)
        raise InvalidTransition(job_id, row.state, "cancel")

    @translate
    def retry(self, job_id: int) -> Job:
        """failed | cancelled → pending, with a fresh budget of attempts. Refused
        (InvalidTransition) while another live job of its queue holds its unique key."""
        try:
            return self._retry(job_id)
        except sa_exc.IntegrityError as exc:
            # PostgreSQL: an enqueue of the key committed between the check and the UPDATE,
            # and the live-jobs unique index refused the row.
            state = self.get(job_id, with_attempts=False).state.value
            raise InvalidTransition(job_id, state, "retry (another pending or running job of "
                                    "its queue holds its unique_key)") from exc

    def _retry(self, job_id: int) -> Job:
        with self.write() as conn:
            row = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_([FAILED, CANCELLED]),
                       # Not while another live job holds its unique key (the live-jobs
                       # unique index would refuse the row): InvalidTransition below.
                       or_(jobs.c.unique_key.is_(None), ~exists().where(
                           _other.c.queue == jobs.c.queue,
                           _other.c.unique_key == jobs.c.unique_key,
                           _other.c.state.in_([PENDING, RUNNING]))))
                .values(attempts=0, run_at=db_now(), finished_at=None, result=None,
                        cancelled_by=None, **workflows.retried_values())
                .returning(*jobs.c)
            ).first()
            if row is not None:
                workflows.revive(conn, job_id)
                self.dialect.wake(conn, [row.queue])
                return job_of(row)
            state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar()
        if state is None:
            raise JobNotFound(job_id)
        if state in (FAILED, CANCELLED):
            raise InvalidTransition(job_id, state, "retry (another pending or running job of "
                                    "its queue holds its unique_key)")
        raise InvalidTransition(job_id, state, "retry")


# -- in bulk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a bulk operation takes: each given field must match (``queues``: the
    caller's API key, None for every queue)."""

    states: tuple[str, ...]
    queue: str | None = None
    task_type: str | None = None
    queues: tuple[str, ...] | None = None

    def where(self) -> ColumnElement[bool]:
        conds = [jobs.c.state.in_(self.states)]
        if self.queue is not None:
            conds.append(jobs.c.queue == self.queue)
        if self.task_type is not None:
            conds.append(jobs.c.task_type == self.task_type)
        if self.queues is not None:
            conds.append(jobs.c.queue.in_(self.queues))
        return and_(*conds)


@dataclass(frozen=True)
class BulkResult:
    changed: int  # jobs moved to the new state
    more: bool  # jobs that match are left (past the limit, or skipped: locked, or refused)


class BulkOperator(Operator):
    """``Operator``'s transitions for every job that matches a filter."""

    #: Jobs per transaction: each chunk holds its row locks briefly.
    BULK_CHUNK = 500

    @translate
    def cancel_matching(self, match: JobFilter, limit: int) -> BulkResult:
        """``cancel`` for up to ``limit`` jobs that ``match`` (pending, running), oldest
        first, in chunks; a running job's attempt is recorded as cancelled."""
        return self._bulk(match, limit, self._cancel_chunk)

    @translate
    def retry_matching(self, match: JobFilter, limit: int) -> BulkResult:
        """``retry`` for up to ``limit`` jobs that ``match`` (failed, cancelled), oldest
        first, in chunks. A job whose unique key another live job holds (or an earlier job
        of the same chunk takes back) is left as it is."""
        return self._bulk(match, limit, self._retry_chunk, self._retry_one)

    @translate
    def count_matching(self, match: JobFilter) -> int:
        with self.read() as conn:
            return conn.execute(select(func.count()).where(match.where())).scalar_one()

    def _bulk(self, match: JobFilter, limit: int,
              chunk: Callable[[Connection, list[Any]], int],
              one: Callable[[int], bool] | None = None) -> BulkResult:
        changed, after, skipped = 0, 0, False
        while changed < limit:
            rows: list[Any] = []
            try:
                with self.write() as conn:
                    # Keyset paging by id, so that a job skipped (locked by a claim in
                    # flight, or refused) is not read again, and the loop ends.
                    rows = list(conn.execute(
                        select(jobs).where(match.where(), jobs.c.id > after)
                        .order_by(jobs.c.id).limit(min(self.BULK_CHUNK, limit - changed))
                        .with_for_update(skip_locked=True)
                    ).all())
                    if not rows:
                        break
                    n = chunk(conn, rows)
            except sa_exc.IntegrityError:
                # PostgreSQL: an enqueue of a unique key committed meanwhile; that chunk
                # again, one job at a time.
                if one is None or not rows:
                    raise
                n = sum(one(r.id) for r in rows)
            after = rows[-1].id
            skipped = skipped or n < len(rows)
            changed += n
        more = skipped or changed >= limit and self.exists(
            select(jobs.c.id).where(match.where(), jobs.c.id > after).limit(1))
        return BulkResult(changed=changed, more=more)

    def _cancel_chunk(self, conn: Connection, rows: list[Any]) -> int:
        ids = [r.id for r in rows]
        cancelled = conn.execute(
            update(jobs).where(jobs.c.id.in_(ids), jobs.c.state.in_(CANCELLABLE))
            .values(state=CANCELLED, finished_at=db_now(), **NO_LEASE)
            .returning(jobs.c.id)
        ).scalars().all()
        done = len(cancelled)
        workflows.ended(self, conn, cancelled)
        self.dialect.finished(conn, cancelled)
        attempt_log.record(conn, self.dialect,
                           [attempt_log.of_row(r) for r in rows if r.state == RUNNING],
                           AttemptOutcome.CANCELLED)
        return done

    def _retry_one(self, job_id: int) -> bool:
        try:
            self.retry(job_id)
            return True
        except (InvalidTransition, JobNotFound):
            return False

    def _retry_chunk(self, conn: Connection, rows: list[Any]) -> int:
        # One job per unique key of a queue: two retried at once would both be live.
        seen: set[tuple[str, str]] = set()
        ids = []
        for r in rows:
            if r.unique_key is not None:
                if (r.queue, r.unique_key) in seen:
                    continue
                seen.add((r.queue, r.unique_key))
            ids.append(r.id)
        woken = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(ids), jobs.c.state.in_([FAILED, CANCELLED]),
                   or_(jobs.c.unique_key.is_(None), ~exists().where(
                       _other.c.queue == jobs.c.queue,
                       _other.c.unique_key == jobs.c.unique_key,
                       _other.c.state.in_([PENDING, RUNNING]))))
            .values(attempts=0, run_at=db_now(), finished_at=None, result=None,
                    cancelled_by=None, **workflows.retried_values())
            .returning(jobs.c.id, jobs.c.queue)
        ).all()
        for r in woken:
            workflows.revive(conn, r.id)
        self.dialect.wake(conn, [r.queue for r in woken])
        return len(woken)
