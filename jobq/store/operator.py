"""An operator's transitions: cancel and retry."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from sqlalchemy import exists, or_, select, update

from jobq.errors import InvalidTransition, JobNotFound
from jobq.store import attempt_log
from jobq.store.base import StoreBase, translate
from jobq.store.exprs import NO_LEASE, db_now
from jobq.store.rows import job_of
from jobq.store.tables import jobs
from jobq.types import AttemptOutcome, Job, JobState

PENDING, RUNNING = JobState.PENDING.value, JobState.RUNNING.value
FAILED, CANCELLED = JobState.FAILED.value, JobState.CANCELLED.value

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
                .where(jobs.c.id == job_id, jobs.c.state.in_([PENDING, RUNNING]))
                .values(state=CANCELLED, finished_at=db_now(), **NO_LEASE)
                .returning(*jobs.c)
            ).first()
            if row is not None:
                if before is not None and before.state == RUNNING:
                    attempt_log.record(conn, self.dialect, [attempt_log.of_row(before)],
                                       AttemptOutcome.CANCELLED)
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
                .values(
                    state=PENDING, attempts=0, run_at=db_now(), finished_at=None, result=None
                )
                .returning(*jobs.c)
            ).first()
            if row is not None:
                self.dialect.wake(conn, [row.queue])
                return job_of(row)
            state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar()
        if state is None:
            raise JobNotFound(job_id)
        if state in (FAILED, CANCELLED):
            raise InvalidTransition(job_id, state, "retry (another pending or running job of "
                                    "its queue holds its unique_key)")
        raise InvalidTransition(job_id, state, "retry")
