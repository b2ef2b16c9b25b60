"""A worker's transitions: claim, complete, fail, snooze and cancel_running (what a
handler's Snooze and Cancel ask), release, heartbeat, and the rescue of jobs whose lease
expired. Each write by a claim's holder is guarded by ``exprs.held``: it names the state it
expects and the claim's fencing token, and zero rows means the lease was lost.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    or_,
    select,
    true,
    update,
)

from jobq.store import attempt_log, workflows
from jobq.store.base import translate
from jobq.store.dialect import ClaimRunner, CompletionRunner
from jobq.store.exprs import (
    DONE_LEASE,
    NO_LEASE,
    db_now,
    held,
    in_state,
    new_token,
    seconds_from_now,
)
from jobq.store.limits import Limits
from jobq.store.maintenance import insert_worker
from jobq.store.rows import built, job_of
from jobq.store.tables import jobs, queues, workers
from jobq.types import (
    AttemptOutcome,
    ClaimedJob,
    Job,
    JobState,
    Lease,
    WorkerRegistration,
)

PENDING, RUNNING, FAILED = JobState.PENDING.value, JobState.RUNNING.value, JobState.FAILED.value
CANCELLED, DONE = JobState.CANCELLED.value, JobState.DONE.value


class Leases(Limits):
    @translate
    def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[ClaimedJob]:
        """pending → running for up to ``limit`` due jobs, highest priority first. The
        candidates are locked with SKIP LOCKED on PostgreSQL, so concurrent claimers pass each
        other by; on SQLite the transaction holds the write lock. (Each attempt is recorded
        when it ends: ``attempt_log``.)"""
        if limit <= 0:
            return []
        # Queues with limits, and keyed jobs, take the limited claim (``store/limits.py``);
        # the rest this one statement, which leaves them out whatever this view says.
        limited, keyed = self.limited_view(queues)
        rows: list[Any] = []
        if limited or keyed:
            rows = self.claim_limited(worker_id, queues, limited, keyed, limit, lease_seconds)
            queues = [q for q in queues if q not in limited]
        if queues and len(rows) < limit:
            params = {"c_queues": list(queues), "c_limit": limit - len(rows),
                      "c_worker": worker_id, "c_lease": float(lease_seconds)}
            rows += self._claim(params)
        claimed = [
            built(ClaimedJob, job=job_of(r), lease=built(
                Lease, job_id=r.id, token=r.lease_token, attempt=r.attempts,
                max_attempts=r.max_attempts, worker_id=worker_id,
            ))
            for r in rows
        ]
        # RETURNING has no order; hand jobs out in the order they were chosen.
        claimed.sort(key=lambda c: (-c.job.priority, c.job.run_at, c.job.id))
        return claimed

    @functools.cached_property
    def _claim(self) -> ClaimRunner:
        """The claim, built once: a statement built per call costs more in SQLAlchemy
        (building it, then its cache key) than PostgreSQL takes to run it, about half of a
        one-job claim, which is what an idle worker's pickup waits for."""
        # IN, not = ANY(array), for the queues, on PostgreSQL too: with one queue the planner
        # reads the claim index in its order and stops at the limit; with an array it cannot
        # know that and sorts every due job first. (A worker's queues never change, so the
        # text stays the same, and so does the prepared statement.)
        # A paused queue's jobs are not due (``store/queues.py``): NOT IN a subquery of the
        # paused queues' names, which PostgreSQL runs once per claim as a hashed subplan (one
        # look at a table of a few rows, nothing while no queue is paused) and checks per
        # candidate as a filter, so the claim index's order and the LIMIT stay as they were.
        # Nor are, here, the jobs of a queue with a limit, or with a concurrency key: only
        # the limited claim takes those (``store/limits.py``), which is what keeps a limit
        # however stale a worker's view of limits is.
        held_back = select(queues.c.name).where(or_(
            queues.c.paused == true(), queues.c.concurrency.is_not(None),
            queues.c.rate.is_not(None)))
        due = and_(in_state(PENDING),
                   jobs.c.queue.in_(bindparam("c_queues", expanding=True)),
                   jobs.c.run_at <= db_now(),
                   jobs.c.queue.not_in(held_back),
                   jobs.c.concurrency_key.is_(None))
        candidates = (
            select(jobs.c.id).where(due)
            .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
            .limit(bindparam("c_limit", type_=Integer))
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(jobs)
            # No second "state = pending" here: the candidates were locked (SKIP LOCKED
            # re-checks each row's state as it locks it; SQLite holds the write lock), and
            # with it PostgreSQL, misled by stale statistics, may plan a scan of every
            # pending row against the picked ids (290 ms a claim with 10k pending).
            .where(jobs.c.id.in_(_picked(candidates)))
            .values(
                state=RUNNING,
                attempts=jobs.c.attempts + 1,
                worker_id=bindparam("c_worker", type_=String),
                lease_token=new_token(),
                lease_expires_at=seconds_from_now(bindparam("c_lease", type_=Float)),
                started_at=db_now(),
            )
            .returning(*jobs.c)
        )
        probe = select(jobs.c.id).where(due).limit(1)
        return self.dialect.claim_runner(self, probe, claim)

    def complete(self, lease: Lease, result: Any) -> bool:
        """running → done. False when the lease was lost (the job is not changed)."""
        return lease.token in self.complete_many([(lease, result)])

    @translate
    def complete_many(self, finished: Sequence[tuple[Lease, Any]]) -> set[str]:
        """running → done for many jobs at once, each row still guarded by its own fencing
        token, and their attempts recorded. Returns the tokens whose write took; a lease that
        was lost meanwhile (rescued, cancelled) is left out and its job is not changed. The
        statements are the same whatever the batch size (``Dialect.completion_runner``)."""
        if not finished:
            return set()
        taken = self._complete(finished)
        if len(taken) < len(finished):
            # Jobs whose end must be acted on (``store/workflows.py``), and leases lost.
            taken |= self._complete_followed(
                [(lease, result) for lease, result in finished if lease.token not in taken])
        return taken

    def _complete_followed(self, finished: Sequence[tuple[Lease, Any]]) -> set[str]:
        """running → done for jobs with ``on_final`` set, each with what its end does to its
        dependents and callback, in one transaction."""
        with self.write() as conn:
            ids: dict[int, str] = {}
            for lease, result in finished:
                row = conn.execute(
                    update(jobs)
                    .where(held(lease.token, lease.job_id), jobs.c.on_final.is_not(None))
                    .values(state=DONE, finished_at=db_now(), **DONE_LEASE,
                            result=bindparam("f_result", result, type_=jobs.c.result.type))
                    .returning(jobs.c.id)
                ).first()
                if row is not None:
                    ids[lease.job_id] = lease.token
            if ids:
                workflows.ended(self, conn, ids)
                self.dialect.finished(conn, ids)
        return set(ids.values())

    @functools.cached_property
    def _complete(self) -> CompletionRunner:
        return self.dialect.completion_runner(self)

    @translate
    def fail(
        self, lease: Lease, error: str, tb: str, retry_delay_seconds: float, *,
        final: bool = False, outcome: AttemptOutcome = AttemptOutcome.ERROR,
    ) -> JobState | None:
        """running → pending (after ``retry_delay_seconds``) or, with no attempts left or
        ``final`` (the task does not retry this error), failed. The attempt is logged with
        ``outcome``: ``error`` (the handler raised) or ``timeout`` (it ran past its timeout).

        Returns the new state, or None when the lease was lost (the job is not changed).
        """
        with self.write() as conn:
            return _fail(conn, self, lease, error, tb, retry_delay_seconds, final,
                         outcome)

    @translate
    def snooze(self, lease: Lease, seconds: float, max_snoozes: int) -> JobState | None:
        """running → pending after ``seconds``, the attempt given back (its handler raised
        Snooze): logged as released, ``snoozed: ...``. Unless the job's latest
        ``max_snoozes`` attempts were all snoozes: then this one fails it for good.

        Returns the new state, or None when the lease was lost (the job is not changed).
        """
        with self.write() as conn:
            if attempt_log.snoozes_in_a_row(conn, lease.job_id, max_snoozes) >= max_snoozes:
                why = (f"Snooze: snoozed {max_snoozes} times in a row, the most its task "
                       "allows (max_snoozes)")
                return _fail(conn, self, lease, why, "", 0.0, True)
            row = conn.execute(
                update(jobs)
                .where(held(lease.token, lease.job_id))
                .values(state=PENDING, attempts=jobs.c.attempts - 1,
                        run_at=seconds_from_now(seconds), **NO_LEASE)
                .returning(jobs.c.started_at, jobs.c.queue)
            ).first()
            if row is None:
                return None
            attempt_log.record(conn, self.dialect, [_of_lease(lease, row.started_at)],
                               AttemptOutcome.RELEASED, attempt_log.snooze_note(seconds))
            if seconds <= 0:
                self.dialect.wake(conn, [row.queue])
        return JobState.PENDING

    @translate
    def cancel_running(self, lease: Lease, reason: str) -> bool:
        """running → cancelled at its holder's word (its handler raised Cancel), attempts
        left or not; ``reason`` is kept as the job's last error and its attempt's error.
        False when the lease was lost (the job is not changed)."""
        with self.write() as conn:
            row = conn.execute(
                update(jobs)
                .where(held(lease.token, lease.job_id))
                .values(state=CANCELLED, finished_at=db_now(), last_error=reason, **NO_LEASE)
                .returning(jobs.c.started_at)
            ).first()
            if row is None:
                return False
            attempt_log.record(conn, self.dialect, [_of_lease(lease, row.started_at)],
                               AttemptOutcome.CANCELLED, reason)
            workflows.ended(self, conn, [lease.job_id])
            self.dialect.finished(conn, [lease.job_id])
        return True

    @translate
    def release(self, leases: Sequence[Lease]) -> int:
        """running → pending without charging the attempt (graceful shutdown)."""
        released = 0
        with self.write() as conn:
            for lease in leases:
                row = conn.execute(
                    update(jobs)
                    .where(held(lease.token, lease.job_id))
                    # run_at stays: the job was due already and keeps its place in line.
                    .values(state=PENDING, attempts=jobs.c.attempts - 1, **NO_LEASE)
                    .returning(jobs.c.started_at)
                ).first()
                if row is not None:
                    released += 1
                    attempt_log.record(conn, self.dialect, [_of_lease(lease, row.started_at)],
                                       AttemptOutcome.RELEASED)
            if released:
                queues = conn.execute(
                    select(jobs.c.queue).where(jobs.c.id.in_([lease.job_id for lease in leases]))
                ).scalars()
                self.dialect.wake(conn, queues)
        return released

    @translate
    def heartbeat(
        self,
        worker_id: str,
        tokens: Sequence[str],
        lease_seconds: float,
        *,
        registration: WorkerRegistration | None = None,
    ) -> set[str]:
        """Extend the leases this worker still holds; return the tokens that are still valid.

        A token missing from the answer was rescued, cancelled or otherwise lost: the worker
        must stop that job and expect its late writes to be refused. With ``registration``,
        a worker row that was pruned meanwhile (the worker was frozen) is written again.
        """
        with self.write() as conn:
            seen = conn.execute(
                update(workers).where(workers.c.id == worker_id).values(last_heartbeat_at=db_now())
            ).rowcount
            if not seen and registration is not None:
                insert_worker(conn, registration)
            if not tokens:
                return set()
            rows = conn.execute(
                update(jobs)
                .where(held(self.dialect.any_of(jobs.c.lease_token, tokens, String)),
                       jobs.c.worker_id == worker_id)
                .values(lease_expires_at=seconds_from_now(lease_seconds))
                .returning(jobs.c.lease_token)
            ).all()
        return {r.lease_token for r in rows}

    @translate
    def rescue(self, limit: int = 1000) -> list[Job]:
        """running → pending (or failed, attempts spent) for jobs whose lease expired."""
        expired = (
            select(jobs.c.id, jobs.c.attempts, jobs.c.worker_id, jobs.c.lease_token,
                   jobs.c.started_at)
            .where(in_state(RUNNING), jobs.c.lease_expires_at < db_now())
            .order_by(jobs.c.lease_expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        spent = jobs.c.attempts >= jobs.c.max_attempts
        if self.dialect.single_writer and not self.exists(expired.limit(1)):
            return []
        with self.write() as conn:
            # Read first, while they are still running: their leases become the attempts
            # recorded as lost. Locked (SKIP LOCKED; SQLite holds the write lock), they stay
            # so until the UPDATE, whose guard repeats the check all the same.
            holders = {r.id: attempt_log.of_row(r) for r in conn.execute(expired)}
            if not holders:
                return []
            rows = conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(list(holders)), in_state(RUNNING),
                       jobs.c.lease_expires_at < db_now())
                .values(
                    state=case((spent, FAILED), else_=PENDING),
                    # run_at stays: a rescued job was due already, so it goes back to the
                    # head of the line rather than behind everything enqueued since.
                    finished_at=case((spent, db_now()), else_=None),
                    last_error="lease expired: the worker stopped heartbeating",
                    **NO_LEASE,
                )
                .returning(*jobs.c)
            ).all()
            attempt_log.record(conn, self.dialect, [holders[r.id] for r in rows],
                               AttemptOutcome.LOST, "lease expired")
            self.dialect.wake(conn, (r.queue for r in rows if r.state == PENDING))
            failed = [r.id for r in rows if r.state == FAILED]
            workflows.ended(self, conn, failed)
            self.dialect.finished(conn, failed)
        return [job_of(r) for r in rows]


def _picked(candidates: Select[Any]) -> Select[Any]:
    """The ids chosen by ``candidates`` (a locking, limited SELECT), computed exactly once.

    PostgreSQL may plan ``id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`` as a nested-loop
    semi join that re-runs the subquery for every outer row; each re-run skips the rows this
    very statement has just updated and locks the next ones, so far more than ``n`` rows
    change. A MATERIALIZED CTE is evaluated once, which keeps the limit a limit.
    """
    picked = candidates.cte("picked").prefix_with("MATERIALIZED", dialect="postgresql")
    return select(picked.c.id)


def _fail(conn: Connection, store: Any, lease: Lease, error: str, tb: str,
          retry_delay_seconds: float, final: bool,
          outcome: AttemptOutcome = AttemptOutcome.ERROR) -> JobState | None:
    """``Leases.fail`` in ``conn``'s transaction."""
    if final:
        values: dict[str, Any] = {"state": FAILED, "finished_at": db_now()}
    else:
        spent = jobs.c.attempts >= jobs.c.max_attempts
        values = {
            "state": case((spent, FAILED), else_=PENDING),
            "run_at": case((spent, jobs.c.run_at),
                           else_=seconds_from_now(retry_delay_seconds)),
            "finished_at": case((spent, db_now()), else_=None),
        }
    row = conn.execute(
        update(jobs)
        .where(held(lease.token, lease.job_id))
        .values(last_error=error, **values, **NO_LEASE)
        .returning(jobs.c.state, jobs.c.started_at)
    ).first()
    if row is None:
        return None
    attempt_log.record(conn, store.dialect, [_of_lease(lease, row.started_at)], outcome,
                       error, tb)
    if row.state == FAILED:
        workflows.ended(store, conn, [lease.job_id])
        store.dialect.finished(conn, [lease.job_id])
    return JobState(row.state)


def _of_lease(lease: Lease, started_at: Any) -> dict[str, Any]:
    """The attempt a lease held, as ``attempt_log.record`` takes it."""
    return {"job_id": lease.job_id, "attempt": lease.attempt, "worker_id": lease.worker_id,
            "lease_token": lease.token, "started_at": started_at}
