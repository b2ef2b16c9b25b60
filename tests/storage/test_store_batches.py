"""The store's batched hot path and its maintenance, run once per backend: completing many jobs
in one statement (each row still fenced by its own token), pruning finished jobs, and the
wake-up notifications that PostgreSQL sends at commit."""

from __future__ import annotations

import dataclasses
import json
import math
import select
import time
from collections.abc import Iterator

import psycopg
import pytest
from factories import claim_one, enqueue, enqueue_many
from sqlalchemy import text

from jobq.store import SqlStore
from jobq.store.direct import Direct
from jobq.store.exprs import MAINTENANCE_LOCK
from jobq.store.postgres import listen_dsn
from jobq.store.postgres import _MARK_DONE, NOTIFY_CHANNEL
from jobq.types import AttemptOutcome, JobState


def test_complete_many_writes_each_result_and_closes_each_attempt(store: SqlStore) -> None:
    enqueue_many(store, 5)
    claimed = store.claim("w1", ["default"], 5, 30)
    results = [None, "s", 3, [1, "x", 2.5], {"nested": {"ok": True}}]
    taken = store.complete_many([(c.lease, r) for c, r in zip(claimed, results)])
    assert taken == {c.lease.token for c in claimed}
    for c, r in zip(claimed, results):
        job = store.get(c.job.id)
        assert job.state is JobState.DONE
        assert job.result == r
        assert job.finished_at is not None and job.lease_token is None
        assert [a.outcome for a in job.attempt_log] == [AttemptOutcome.DONE]


def test_complete_many_skips_lost_leases_and_changes_only_the_valid_rows(store: SqlStore) -> None:
    enqueue_many(store, 4)
    a, b, c, d = store.claim("w1", ["default"], 4, 30)
    store.cancel(b.job.id)  # b's lease is gone
    wrong = dataclasses.replace(c.lease, token="0" * 32)  # a token that was never issued
    crossed = dataclasses.replace(d.lease, token=a.lease.token)  # another job's token
    before_c, before_d = store.get(c.job.id), store.get(d.job.id)
    taken = store.complete_many([(a.lease, 1), (b.lease, 2), (wrong, 3), (crossed, 4)])
    assert taken == {a.lease.token}
    assert store.get(a.job.id).result == 1
    assert store.get(b.job.id).state is JobState.CANCELLED
    assert store.get(c.job.id) == before_c
    assert store.get(d.job.id) == before_d
    # Written once: a repeat of the same batch is refused as a whole.
    assert store.complete_many([(a.lease, "again")]) == set()
    assert store.get(a.job.id).result == 1


def test_complete_many_of_nothing(store: SqlStore) -> None:
    assert store.complete_many([]) == set()


def test_prune_deletes_only_finished_jobs_older_than_the_retention(store: SqlStore) -> None:
    done = enqueue(store)
    c = claim_one(store)
    assert c.job.id == done.id
    store.complete(c.lease, "r")
    cancelled = enqueue(store)
    store.cancel(cancelled.id)
    pending = enqueue(store)
    running = enqueue(store)
    claim_one(store)
    assert store.prune_finished(3600) == 0  # nothing is an hour old
    time.sleep(0.05)
    assert store.prune_finished(0) == 2
    remaining = {j.id for j in store.list_jobs(limit=10).items}
    assert remaining == {pending.id, running.id}
    # The attempts of the pruned jobs went with them.
    with store.engine.connect() as conn:
        orphans = conn.execute(
            text("SELECT count(*) FROM jobq_attempts WHERE job_id NOT IN "
                 "(SELECT id FROM jobq_jobs)")
        ).scalar()
    assert orphans == 0


def test_failed_jobs_have_their_own_retention(store: SqlStore) -> None:
    failed = enqueue(store, max_attempts=1)
    c = claim_one(store)
    assert store.fail(c.lease, "boom", "", 0) is JobState.FAILED
    done = enqueue(store)
    store.complete(claim_one(store).lease, None)
    cancelled = enqueue(store)
    store.cancel(cancelled.id)
    time.sleep(0.05)

    def left() -> set[int]:
        return {j.id for j in store.list_jobs(limit=10).items}

    assert store.prune_finished(0, keep_failed_for=math.inf) == 2  # done, cancelled: not failed
    assert left() == {failed.id}
    assert store.prune_finished(0, keep_failed_for=3600) == 0  # failed: kept for an hour
    assert store.prune_finished(math.inf, keep_failed_for=0) == 1
    assert left() == set() and done.id not in left()


def test_prune_works_in_batches(store: SqlStore) -> None:
    for job in enqueue_many(store, 5):
        store.cancel(job.id)
    time.sleep(0.05)
    assert store.prune_finished(0, limit=2) == 2
    assert store.prune_finished(0, limit=2) == 2
    assert store.prune_finished(0, limit=2) == 1
    assert store.prune_finished(0, limit=2) == 0


def test_only_one_process_prunes_at_a_time(store: SqlStore, db_url: str) -> None:
    if store.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time anyway (BEGIN IMMEDIATE)")
    store.cancel(enqueue(store).id)
    time.sleep(0.05)
    dsn = listen_dsn(store.engine)
    assert dsn is not None
    with psycopg.connect(dsn) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", (MAINTENANCE_LOCK,))
        assert store.prune_finished(0) is None  # someone else is pruning
    assert store.prune_finished(0) == 1


# -- wake-up notifications (PostgreSQL) ------------------------------------------------------


class Listener:
    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def received(self, wait: float = 0.5) -> list[str]:
        """The payloads that arrived within ``wait`` seconds."""
        select.select([self.conn.fileno()], [], [], wait)
        return [n.payload for n in self.conn.notifies(timeout=0.05)]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def listener(store: SqlStore) -> Listener:
    dsn = listen_dsn(store.engine)
    if dsn is None:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's (SQLite workers watch the file's commits)")
    lst = Listener(dsn)
    yield lst
    lst.close()


def test_rescue_retry_and_release_wake_workers(store: SqlStore, listener: Listener) -> None:
    enqueue_many(store, 2, queue="mail")
    listener.received(0.2)  # whatever the enqueues sent
    a = store.claim("w1", ["mail"], 1, 0.01)[0]
    b = store.claim("w1", ["mail"], 1, 30)[0]
    time.sleep(0.05)
    assert [j.id for j in store.rescue()] == [a.job.id]
    assert listener.received() == ["mail"]
    assert store.release([b.lease]) == 1
    assert listener.received() == ["mail"]
    c = claim_one(store, queues=("mail",))
    store.fail(c.lease, "boom", "tb", 0)
    listener.received(0.2)
    store.cancel(c.job.id)
    store.retry(c.job.id)
    assert listener.received() == ["mail"]
    # Nothing is sent for a transition that changes nothing.
    assert store.release([b.lease]) == 0
    assert listener.received(0.2) == []


# -- plans (PostgreSQL) ----------------------------------------------------------------------


def test_a_batch_completion_reads_its_rows_by_id_on_a_table_not_yet_analysed(
        store: SqlStore) -> None:
    """A fresh table (or one just grown by a large batch) has no statistics for the planner
    yet. Joined to the batch alone, PostgreSQL then read the whole table for every completion
    (a hash join over a sequential scan: 17-20 ms for 200 jobs among 20,000, against 7 ms)."""
    if store.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL plan")
    for _ in range(10):
        enqueue_many(store, 1000)
    claimed = store.claim("w1", ["default"], 200, 30)
    assert len(store.complete_many([(c.lease, None) for c in claimed[:100]])) == 100
    # The statement as the completion runs it (``store/direct.py``), for the other 100.
    statement, own = Direct(_MARK_DONE, store.engine)._text_for({})
    done = json.dumps([{"id": c.lease.job_id, "token": c.lease.token, "result": None,
                        "running": "running"} for c in claimed[100:]])
    dsn = listen_dsn(store.engine)
    assert dsn is not None
    with psycopg.connect(dsn) as conn:  # its plan (EXPLAIN alone does not run it)
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + statement,
                            {**own, "c_done": done}).fetchone()[0]
    scans = [(n.get("Node Type"), n.get("Relation Name")) for n in _plan_nodes(plan[0]["Plan"])]
    assert ("Seq Scan", "jobq_jobs") not in scans, scans


def _plan_nodes(node: dict) -> Iterator[dict]:  # type: ignore[type-arg]
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)
