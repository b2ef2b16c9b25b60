"""Unique jobs (migration 0007), on both backends: a unique key is held by the live job of
its queue, or by a finished one within its ``unique_for``, and freed after."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from factories import claim_one, new_job
from sqlalchemy import func, select, update

from jobq.errors import IdempotencyConflict, InvalidJob, InvalidTransition
from jobq.store import SqlStore
from jobq.store.exprs import seconds_from_now
from jobq.store.tables import jobs
from jobq.types import JobState, NewJob


def _count(store: SqlStore, **where: Any) -> int:
    with store.engine.connect() as conn:
        stmt = select(func.count()).select_from(jobs)
        for k, v in where.items():
            stmt = stmt.where(jobs.c[k] == v)
        return conn.execute(stmt).scalar_one()


def _finished_ago(store: SqlStore, job_id: int, seconds: float) -> None:
    """Move a finished job's finish time ``seconds`` into the past (database clock)."""
    with store.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id)
                     .values(finished_at=seconds_from_now(-seconds)))


def test_a_live_job_holds_its_key_and_a_repeat_gets_it_whatever_its_request(
        store: SqlStore) -> None:
    first = store.enqueue(new_job(payload=1, unique_key="sync:7"))
    assert first.created and first.job.unique_key == "sync:7"
    again = store.enqueue(new_job(payload=2, priority=5, unique_key="sync:7"))
    assert (again.created, again.job.id) == (False, first.job.id)
    assert again.job.payload == 1  # the existing job, as stored
    claimed = claim_one(store)
    assert claimed.job.id == first.job.id
    running = store.enqueue(new_job(payload=3, unique_key="sync:7"))
    assert (running.created, running.job.id, running.job.state) == (
        False, first.job.id, JobState.RUNNING)
    # Another queue, or another key, is another job.
    assert store.enqueue(new_job(queue="other", unique_key="sync:7")).created
    assert store.enqueue(new_job(unique_key="sync:8")).created


def test_the_key_is_free_once_the_job_finished(store: SqlStore) -> None:
    first = store.enqueue(new_job(unique_key="k")).job
    c = claim_one(store)
    assert store.complete(c.lease, "ok")
    second = store.enqueue(new_job(unique_key="k"))
    assert second.created and second.job.id != first.id
    store.cancel(second.job.id)
    third = store.enqueue(new_job(unique_key="k"))
    assert third.created and third.job.id not in (first.id, second.job.id)


def test_unique_for_keeps_the_key_after_the_finish_until_its_window_passed(
        store: SqlStore) -> None:
    first = store.enqueue(new_job(unique_key="w", unique_for=60)).job
    assert first.unique_for == 60
    c = claim_one(store)
    assert store.complete(c.lease, "ok")
    within = store.enqueue(new_job(unique_key="w", unique_for=60))
    assert (within.created, within.job.id, within.job.state) == (False, first.id, JobState.DONE)
    _finished_ago(store, first.id, 61)
    after = store.enqueue(new_job(unique_key="w", unique_for=60))
    assert after.created and after.job.id != first.id
    # A failed job's window counts too.
    c = claim_one(store)
    assert store.fail(c.lease, "boom", "", 0.0, final=True) is JobState.FAILED
    assert store.enqueue(new_job(unique_key="w")).job.id == after.job.id


def test_unique_for_needs_a_unique_key_and_a_sane_number() -> None:
    with pytest.raises(InvalidJob, match="unique_for"):
        NewJob("echo", unique_for=5)
    for bad in (-1, float("nan"), True, "5"):
        with pytest.raises(InvalidJob, match="unique_for"):
            NewJob("echo", unique_key="k", unique_for=bad)  # type: ignore[arg-type]
    for bad in ("", "x" * 256, "a\x00b"):
        with pytest.raises(InvalidJob, match="unique_key"):
            NewJob("echo", unique_key=bad)


def test_enqueue_many_honours_unique_keys_before_and_in_the_batch(store: SqlStore) -> None:
    old = store.enqueue(new_job(payload="old", unique_key="a")).job
    results = store.enqueue_many([
        new_job(payload=0, unique_key="b"),
        new_job(payload=1, unique_key="a"),          # held by an existing job
        new_job(payload=2),                          # no key
        new_job(payload=3, unique_key="b"),          # held by item 0
        new_job(payload=4, idempotency_key="i"),
        new_job(payload=4, idempotency_key="i", unique_key="c"),  # an idempotency repeat
    ])
    assert [r.created for r in results] == [True, False, True, False, True, False]
    assert results[1].job.id == old.id
    assert results[3].job.id == results[0].job.id
    assert results[5].job.id == results[4].job.id
    assert [r.job.payload for r in results] == [0, "old", 2, 0, 4, 4]
    assert _count(store) == 4


def test_a_batch_with_unique_keys_is_still_all_or_nothing(store: SqlStore) -> None:
    store.enqueue(new_job(payload=1, idempotency_key="taken"))
    before = _count(store)
    with pytest.raises(IdempotencyConflict) as err:
        store.enqueue_many([new_job(unique_key="u1"), new_job(payload=1),
                            new_job(payload=2, idempotency_key="taken")])
    assert err.value.index == 2
    assert _count(store) == before
    assert store.enqueue(new_job(unique_key="u1")).created  # the rolled-back job held nothing


def test_concurrent_enqueues_of_one_unique_key_create_one_job(store: SqlStore) -> None:
    n = 8
    for round_ in range(3):
        key = f"race-{round_}"
        barrier = threading.Barrier(n)
        results: list[Any] = [None] * n
        errors: list[BaseException] = []

        def body(i: int) -> None:
            try:
                barrier.wait(timeout=10)
                # Half alone, half in batches with other keys: both paths race.
                if i % 2:
                    results[i] = store.enqueue(new_job(payload=i, unique_key=key))
                else:
                    results[i] = store.enqueue_many(
                        [new_job(payload=i, unique_key=f"{key}-own-{i}"),
                         new_job(payload=i, unique_key=key)])[1]
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert len({r.job.id for r in results}) == 1
        assert sum(r.created for r in results) == 1
        assert _count(store, unique_key=key) == 1


def test_concurrent_enqueues_against_a_finishing_job_with_a_window(store: SqlStore) -> None:
    """Enqueues racing the finish of the key's job, with a window: none creates a job."""
    first = store.enqueue(new_job(unique_key="fin", unique_for=300)).job
    c = claim_one(store)
    n = 6
    barrier = threading.Barrier(n + 1)
    results: list[Any] = [None] * n

    def body(i: int) -> None:
        barrier.wait(timeout=10)
        results[i] = [store.enqueue(new_job(unique_key="fin", unique_for=300))
                      for _ in range(5)]

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait(timeout=10)
    assert store.complete(c.lease, "ok")
    for t in threads:
        t.join(timeout=60)
    assert {r.job.id for rs in results for r in rs} == {first.id}
    assert _count(store, unique_key="fin") == 1


def test_retry_of_a_job_whose_key_another_live_job_holds_is_refused(store: SqlStore) -> None:
    first = store.enqueue(new_job(unique_key="r")).job
    store.cancel(first.id)
    second = store.enqueue(new_job(unique_key="r")).job
    with pytest.raises(InvalidTransition, match="unique_key"):
        store.retry(first.id)
    store.cancel(second.id)
    assert store.retry(first.id).state is JobState.PENDING


def test_jobs_without_unique_keys_are_unchanged(store: SqlStore) -> None:
    job = store.enqueue(new_job()).job
    assert (job.unique_key, job.unique_for) == (None, None)
    got = store.get(job.id)
    assert (got.unique_key, got.unique_for) == (None, None)


def test_retry_racing_an_enqueue_of_its_key_leaves_one_live_job(store: SqlStore) -> None:
    for round_ in range(10):
        key = f"rr-{round_}"
        old = store.enqueue(new_job(unique_key=key)).job
        store.cancel(old.id)
        barrier = threading.Barrier(2)
        outcome: dict[str, Any] = {}

        def retry() -> None:
            barrier.wait(timeout=10)
            try:
                outcome["retry"] = store.retry(old.id).state
            except InvalidTransition as exc:
                outcome["retry"] = exc

        def enqueue() -> None:
            barrier.wait(timeout=10)
            outcome["enqueue"] = store.enqueue(new_job(unique_key=key))

        threads = [threading.Thread(target=retry), threading.Thread(target=enqueue)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert set(outcome) == {"retry", "enqueue"}
        live = [j for j in store.list_jobs(limit=500).items
                if j.unique_key == key and j.state is JobState.PENDING]
        assert len(live) == 1
        if outcome["retry"] is JobState.PENDING:  # the retry won: the enqueue got it
            assert outcome["enqueue"].job.id == old.id and not outcome["enqueue"].created
        else:
            assert isinstance(outcome["retry"], InvalidTransition)
            assert outcome["enqueue"].created
