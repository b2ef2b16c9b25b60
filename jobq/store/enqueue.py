"""Enqueue: one job or a batch in one transaction, with idempotency keys and unique keys.

An idempotency key is unique within its queue (migration 0005): here a key is always the
pair (queue, key), ``Scoped``.

A unique key (migration 0007) is held by at most one live (pending, running) job of its
queue, which a partial unique index enforces, and, with ``unique_for``, by a finished job for
that many seconds after it finished, which the enqueue checks in its transaction. A batch
with a unique key takes its own path (``_enqueue_unique``), one job at a time; batches
without one never pay for it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Float, and_, bindparam, delete, func, or_, select, tuple_

from jobq.errors import IdempotencyConflict, StoreUnavailable
from jobq.store import workflows
from jobq.store.base import StoreBase, translate
from jobq.store.dialect import StatementRunner
from jobq.store.exprs import db_now, seconds_after, seconds_from_now
from jobq.store.rows import created_job, job_of
from jobq.store.tables import jobs
from jobq.types import EnqueueResult, Job, JobState, NewJob

LIVE = (JobState.PENDING.value, JobState.RUNNING.value)

#: An idempotency key within its queue: (queue, key).
Scoped = tuple[str, str]


class Enqueue(StoreBase):
    #: Most jobs one INSERT statement carries; a bigger batch takes several, in one transaction.
    ENQUEUE_CHUNK = 1000

    @functools.cached_property
    def _enqueue_stmt(self) -> Any:
        # Built once, so it is compiled once (``Dialect.enqueue_statement``).
        return self.dialect.enqueue_statement()

    @functools.cached_property
    def _enqueue_lanes_stmt(self) -> Any:
        # The same, with the concurrency key's columns: for batches that have keys.
        return self.dialect.enqueue_statement(lanes=True)

    def enqueue(self, new: NewJob) -> EnqueueResult:
        """Insert one job; with an idempotency key, return the existing job for a repeat."""
        try:
            return self.enqueue_many([new])[0]
        except IdempotencyConflict as exc:
            exc.index = None  # one job, not an item of a batch
            raise

    @translate
    def enqueue_many(self, news: Sequence[NewJob], *,
                     conn: Connection | None = None) -> list[EnqueueResult]:
        """Insert jobs in one transaction, all or nothing; the results are in input order.

        Idempotency keys work as in ``enqueue``, between the items too: an item whose key an
        existing job of its queue or an earlier item of the batch for that queue holds with
        the same request gets that job (``created`` False). With a different request it is
        an IdempotencyConflict whose ``index`` names the item, and nothing is stored. Idle
        workers of the queues that got a job that is due now are woken at commit (on
        PostgreSQL by the INSERT itself).

        ``conn``: write in that connection's transaction (the application's own, see
        ``jobq.store.borrowed``) and commit nothing: the jobs exist once it commits, never if
        it rolls back. An IdempotencyConflict then deletes what this call inserted, so that
        the transaction holds none of the batch, as it would after a rollback of ours.
        """
        if not news:
            return []
        if conn is not None:
            return self._in_their_transaction(conn, news)
        if workflows.needs_graph_path(news):
            with self.write() as own:
                return workflows.enqueue_graph(self, own, news, None)
        if any(new.unique_key is not None for new in news):
            with self.write() as own:
                return self._enqueue_unique(own, news)
        first, fresh = _fresh(news)
        # One statement that can roll nothing back (no key of the batch can conflict after
        # the INSERT) is its own transaction: a lone job costs one round trip.
        alone = len(fresh) <= self.ENQUEUE_CHUNK and (not first or len(news) == 1)
        if alone:
            return self._insert(None, news, first, fresh)
        with self.write() as own:
            return self._insert(own, news, first, fresh)

    def _in_their_transaction(self, conn: Connection,
                              news: Sequence[NewJob]) -> list[EnqueueResult]:
        made: list[int] = []
        try:
            if workflows.needs_graph_path(news):
                return workflows.enqueue_graph(self, conn, news, made)
            if any(new.unique_key is not None for new in news):
                return self._enqueue_unique(conn, news, made)
            first, fresh = _fresh(news)
            return self._insert(conn, news, first, fresh, made)
        except IdempotencyConflict:
            # No savepoint: SQLite's driver, as applications configure it, may open a
            # transaction with SAVEPOINT and commit it with RELEASE. Deleting the rows is the
            # same on both databases, and nothing else has seen them.
            for start in range(0, len(made), 500):
                conn.execute(delete(jobs).where(jobs.c.id.in_(made[start:start + 500])))
            raise

    @functools.cached_property
    def _alone(self) -> dict[bool, StatementRunner]:
        """The enqueue statements (by ``lanes``), each run as its own transaction
        (``Dialect.statement_runner``)."""
        return {False: self.dialect.statement_runner(self, self._enqueue_stmt),
                True: self.dialect.statement_runner(self, self._enqueue_lanes_stmt)}

    def _insert(self, conn: Connection | None, news: Sequence[NewJob],
                first: dict[Scoped, int], fresh: list[int],
                made: list[int] | None = None) -> list[EnqueueResult]:
        """The INSERT of ``enqueue_many``'s common path, on ``conn``, or without one as a
        single statement that is its own transaction; the ids of the rows inserted are added
        to ``made``."""
        rows = []
        for start in range(0, len(fresh), self.ENQUEUE_CHUNK):
            chunk = [news[i] for i in fresh[start:start + self.ENQUEUE_CHUNK]]
            lanes = any(n.concurrency_key is not None for n in chunk)
            params = self.dialect.enqueue_params([_values(n, lanes) for n in chunk],
                                                 self.engine)
            stmt = self._enqueue_lanes_stmt if lanes else self._enqueue_stmt
            rows += (self._alone[lanes](params) if conn is None
                     else conn.execute(stmt, params).all())
        if made is not None:
            made.extend(r.id for r in rows)
        # RETURNING promises no order. Ids are drawn in the order the rows are inserted,
        # which is the order of the items (ORDER BY ordinality; VALUES in order; chunks
        # one after another), so sorted by id the rows pair with the items that were
        # inserted: the fresh ones but those whose key an existing job holds.
        rows.sort(key=lambda r: r.id)
        if not first:  # no keys: every item was inserted, in order (the common case)
            if len(rows) != len(news):
                raise RuntimeError("enqueue_many: a row per item was expected")
            return [EnqueueResult(created_job(new, row), created=True)
                    for new, row in zip(news, rows)]
        if conn is None:  # the keys' holders are read after that statement, as in autocommit
            with self.read() as reading:
                return self._with_keys(reading, news, first, fresh, rows)
        return self._with_keys(conn, news, first, fresh, rows)

    def _with_keys(
        self, conn: Connection, news: Sequence[NewJob], first: dict[Scoped, int],
        fresh: list[int], rows: list[Any],
    ) -> list[EnqueueResult]:
        """The results of a batch with idempotency keys, from its inserted ``rows``."""
        made = {(r.queue, r.idempotency_key) for r in rows if r.idempotency_key is not None}
        inserted = [i for i in fresh if news[i].idempotency_key is None
                    or _scoped(news[i]) in made]
        if [(r.queue, r.idempotency_key) for r in rows] != [
                (news[i].queue, news[i].idempotency_key) for i in inserted]:
            raise RuntimeError("enqueue_many: the inserted rows do not pair with the items")
        created = {i: created_job(news[i], row) for i, row in zip(inserted, rows)}
        held = {_scoped(news[i]): job for i, job in created.items()
                if news[i].idempotency_key is not None}
        held.update(_jobs_by_key(conn, [k for k in first if k not in made]))
        results = []
        for i, new in enumerate(news):
            job = created.get(i)
            if job is not None:
                results.append(EnqueueResult(job, created=True))
                continue
            scoped = _scoped(new)
            job = held.get(scoped)
            key = scoped[1]
            if job is None:
                # Deleted (pruned) between the INSERT that found it and the SELECT.
                raise StoreUnavailable(f"the job of idempotency_key {key!r} just vanished")
            if not _same_request(job, new):
                if scoped in made:  # made by this batch, which this error rolls back
                    raise IdempotencyConflict.within_batch(key, i, first[scoped])
                raise IdempotencyConflict(key, job.id, index=i)
            results.append(EnqueueResult(job, created=False))
        return results


    @functools.cached_property
    def _unique_insert(self) -> Any:
        """One job's INSERT for the unique path: ON CONFLICT DO NOTHING without a target, so
        that a taken idempotency key and a unique key held by a live job are both skipped
        (and then told apart by looking)."""
        run_at = func.coalesce(bindparam("at", type_=jobs.c.run_at.type),
                               seconds_from_now(bindparam("delay", type_=Float())))
        return (
            self.dialect.insert(jobs)
            .values(state=LIVE[0], attempts=0, run_at=run_at, created_at=db_now())
            .on_conflict_do_nothing()
            .returning(jobs.c.id, jobs.c.run_at, jobs.c.created_at)
        )

    def _enqueue_unique(self, conn: Connection, news: Sequence[NewJob],
                        made: list[int] | None = None) -> list[EnqueueResult]:
        """``enqueue_many`` for a batch with at least one unique key: in one transaction,
        item by item (keyed items in key order, so that two batches wait for each other's
        keys without a cycle), results in input order.

        An item whose unique key a job of its queue holds (live, or finished within that
        job's ``unique_for``) gets that job, ``created`` False, whatever its request; an
        idempotency key is honoured first, as in ``enqueue_many``. Concurrent enqueues of
        one key: on SQLite the write lock orders them; on PostgreSQL the live-jobs unique
        index does (the second INSERT waits for the first's commit, then is skipped and finds
        the job). A finished job's window is read in the INSERT's transaction: a job that a
        concurrent enqueue's lookup saw live is found again after the skipped INSERT, so the
        one gap is a job created, run and finished entirely between another enqueue's lookup
        and its INSERT (README, "Unique jobs")."""
        results: list[EnqueueResult | None] = [None] * len(news)
        order = sorted(range(len(news)), key=lambda i: (
            news[i].queue, news[i].unique_key or "", news[i].idempotency_key or "", i))
        woken: set[str] = set()
        by_idem: dict[Scoped, tuple[int, Job]] = {}
        for i in order:
            new = news[i]
            for _try in range(3):
                found = self._held_by(conn, new, i, by_idem)
                if found is not None:
                    results[i] = EnqueueResult(found, created=False)
                    break
                row = conn.execute(self._unique_insert, {
                    **_values(new, new.concurrency_key is not None),
                    "unique_key": new.unique_key,
                    "unique_for": None if new.unique_for is None else float(new.unique_for),
                }).first()
                if row is not None:
                    job = created_job(new, row)
                    results[i] = EnqueueResult(job, created=True)
                    if made is not None:
                        made.append(row.id)
                    if new.idempotency_key is not None:
                        by_idem[_scoped(new)] = (i, job)
                    if row.run_at <= row.created_at:
                        woken.add(new.queue)
                    break
            else:  # skipped, and its holder gone before it could be read, three times
                raise StoreUnavailable(f"the job holding unique_key {new.unique_key!r} "
                                       "kept vanishing; try again")
        self.dialect.wake(conn, woken)
        return [r for r in results if r is not None]

    def _held_by(self, conn: Connection, new: NewJob, index: int,
                 by_idem: dict[Scoped, tuple[int, Job]]) -> Job | None:
        """The job that ``new`` is a repeat of: by its idempotency key (an IdempotencyConflict
        for a different request), else the holder of its unique key; None when it is new."""
        if new.idempotency_key is not None:
            scoped = _scoped(new)
            if scoped in by_idem:
                first, job = by_idem[scoped]
                if not _same_request(job, new):
                    raise IdempotencyConflict.within_batch(scoped[1], index, first)
                return job
            job = _jobs_by_key(conn, [scoped]).get(scoped)
            if job is not None:
                if not _same_request(job, new):
                    raise IdempotencyConflict(scoped[1], job.id, index=index)
                return job
        if new.unique_key is None:
            return None
        return unique_holder(conn, new.queue, new.unique_key)


def unique_holder(conn: Connection, queue: str, key: str) -> Job | None:
    """The job of ``queue`` that holds unique ``key``: its live job, else one finished less
    than its ``unique_for`` ago (the newest)."""
    window_open = and_(jobs.c.finished_at.is_not(None), jobs.c.unique_for.is_not(None),
                       seconds_after(jobs.c.finished_at, jobs.c.unique_for) > db_now())
    row = conn.execute(
        select(jobs).where(jobs.c.queue == queue, jobs.c.unique_key == key,
                           or_(jobs.c.state.in_(LIVE), window_open))
        .order_by(jobs.c.id.desc()).limit(1)
    ).first()
    return None if row is None else job_of(row)


def _scoped(new: NewJob) -> Scoped:
    assert new.idempotency_key is not None
    return new.queue, new.idempotency_key


def _fresh(news: Sequence[NewJob]) -> tuple[dict[Scoped, int], list[int]]:
    """Each (queue, idempotency key)'s first item, and the items to insert (those without a
    key, and each scoped key's first), keyed ones in key order."""
    first: dict[Scoped, int] = {}
    fresh: list[int] = []
    for i, new in enumerate(news):
        if new.idempotency_key is None:
            fresh.append(i)
        elif (scoped := _scoped(new)) not in first:
            first[scoped] = i
            fresh.append(i)
    # Keyed rows go in in key order: a unique-index insert waits for another transaction that
    # inserted the same key, so two batches that took shared keys in different orders would
    # deadlock (PostgreSQL). The same order everywhere leaves waits without cycles. (Ids then
    # follow key order among keyed items; results stay in input order.)
    if first:
        fresh.sort(key=lambda i: (False, "", "", i) if news[i].idempotency_key is None
                   else (True, *_scoped(news[i]), i))
    return first, fresh


def _values(new: NewJob, lanes: bool = False) -> dict[str, Any]:
    """One job's fields, as ``Dialect.enqueue_statement`` takes them; the concurrency key's
    with ``lanes`` (a batch in which a job has one: every row of a multi-row INSERT names
    the same columns, and a batch without keys names none of them)."""
    values = {
        "task_type": new.task_type,
        "payload": new.payload,
        "queue": new.queue,
        "priority": new.priority,
        "max_attempts": new.max_attempts,
        "idempotency_key": new.idempotency_key,
        "at": new.run_at,
        "delay": float(new.delay_seconds or 0),
        # NULL (not JSON null) when none were given: see tables.JsonOrNull.
        "tags": list(new.tags) if new.tags else None,
        "meta": new.meta or None,
        "timeout_seconds": new.timeout_seconds,
        "trace_context": new.trace_context,
    }
    if lanes:
        values["concurrency_key"] = new.concurrency_key
        values["concurrency_limit"] = new.concurrency_limit
    return values


def _same_request(job: Job, new: NewJob) -> bool:
    return (
        job.task_type == new.task_type
        and job.payload == new.payload
        and job.queue == new.queue
        and job.priority == new.priority
        and job.max_attempts == new.max_attempts
    )


def _jobs_by_key(conn: Connection, keys: Sequence[Scoped]) -> dict[Scoped, Job]:
    """The jobs that hold ``keys`` (each in its queue), by scoped key."""
    found: dict[Scoped, Job] = {}
    for start in range(0, len(keys), 500):  # a bounded number of parameters each
        stmt = select(jobs).where(
            tuple_(jobs.c.queue, jobs.c.idempotency_key).in_(keys[start:start + 500]))
        found.update(((r.queue, r.idempotency_key), job_of(r)) for r in conn.execute(stmt))
    return found
