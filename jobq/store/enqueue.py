"""Enqueue: one job or a batch in one transaction, with idempotency keys.

An idempotency key is unique within its queue (migration 0005): here a key is always the
pair (queue, key), ``Scoped``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select, tuple_

from jobq.errors import IdempotencyConflict, StoreUnavailable
from jobq.store.base import StoreBase, translate
from jobq.store.rows import created_job, job_of
from jobq.store.tables import jobs
from jobq.types import EnqueueResult, Job, NewJob

#: An idempotency key within its queue: (queue, key).
Scoped = tuple[str, str]


class Enqueue(StoreBase):
    #: Most jobs one INSERT statement carries; a bigger batch takes several, in one transaction.
    ENQUEUE_CHUNK = 1000

    @functools.cached_property
    def _enqueue_stmt(self) -> Any:
        # Built once, so it is compiled once (``Dialect.enqueue_statement``).
        return self.dialect.enqueue_statement()

    def enqueue(self, new: NewJob) -> EnqueueResult:
        """Insert one job; with an idempotency key, return the existing job for a repeat."""
        try:
            return self.enqueue_many([new])[0]
        except IdempotencyConflict as exc:
            exc.index = None  # one job, not an item of a batch
            raise

    @translate
    def enqueue_many(self, news: Sequence[NewJob]) -> list[EnqueueResult]:
        """Insert jobs in one transaction, all or nothing; the results are in input order.

        Idempotency keys work as in ``enqueue``, between the items too: an item whose key an
        existing job of its queue or an earlier item of the batch for that queue holds with
        the same request gets that job (``created`` False). With a different request it is
        an IdempotencyConflict whose ``index`` names the item, and nothing is stored. Idle
        workers of the queues that got a job that is due now are woken at commit (on
        PostgreSQL by the INSERT itself).
        """
        if not news:
            return []
        first, fresh = _fresh(news)
        # One statement that can roll nothing back (no key of the batch can conflict after
        # the INSERT) is its own transaction: a lone job costs one round trip.
        alone = len(fresh) <= self.ENQUEUE_CHUNK and (not first or len(news) == 1)
        with self.dialect.one_statement(self) if alone else self.write() as conn:
            rows = []
            for start in range(0, len(fresh), self.ENQUEUE_CHUNK):
                chunk = [news[i] for i in fresh[start:start + self.ENQUEUE_CHUNK]]
                params = self.dialect.enqueue_params([_values(n) for n in chunk], self.engine)
                rows += conn.execute(self._enqueue_stmt, params).all()
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


def _values(new: NewJob) -> dict[str, Any]:
    """One job's fields, as ``Dialect.enqueue_statement`` takes them."""
    return {
        "task_type": new.task_type,
        "payload": new.payload,
        "queue": new.queue,
        "priority": new.priority,
        "max_attempts": new.max_attempts,
        "idempotency_key": new.idempotency_key,
        "at": new.run_at,
        "delay": float(new.delay_seconds or 0),
    }


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
