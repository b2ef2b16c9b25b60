"""The behavioural suite of the store, run once per backend (SQLite and PostgreSQL).

Every test goes through the ``store`` fixture, which is parametrized over both backends by
``db_url``. Times are compared with the database's clock (``store.ping()``), never the local one.
"""

from __future__ import annotations

import base64
import dataclasses
import random
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from factories import claim_expired, claim_one, enqueue, enqueue_many, future, new_job, past
from sqlalchemy import func, select, update

from jobq.errors import (
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
)
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.store import make_engine
from jobq.store.exprs import seconds_from_now
from jobq.store.postgres import NOTIFY_CHANNEL
from jobq.store.rows import encode_cursor
from jobq.store.tables import attempts, jobs, workers
from jobq.types import (
    AttemptOutcome,
    ClaimedJob,
    Job,
    JobState,
    Lease,
    NewJob,
)

#: Slack for comparing two readings of the database clock taken a few statements apart.
SLACK = timedelta(seconds=2)


def approx_time(actual: datetime | None, expected: datetime, slack: timedelta = SLACK) -> bool:
    assert actual is not None
    assert actual.tzinfo is not None, "times must be timezone-aware"
    return abs(actual - expected) <= slack


def run_threads(n: int, target: Any) -> list[Any]:
    """Run ``target(i)`` in n threads released together; re-raise the first failure."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def stale(lease: Lease, token: str = "0" * 32) -> Lease:
    return dataclasses.replace(lease, token=token)


# -- enqueue ---------------------------------------------------------------------------------


def test_enqueue_defaults(store: SqlStore) -> None:
    before = store.ping()
    res = store.enqueue(NewJob(task_type="echo"))
    after = store.ping()
    job = res.job
    assert res.created is True
    assert isinstance(job.id, int) and job.id >= 1
    assert job.task_type == "echo"
    assert job.payload is None
    assert job.queue == "default"
    assert job.priority == 0
    assert job.state is JobState.PENDING
    assert job.attempts == 0
    assert job.max_attempts == 3
    assert job.idempotency_key is None
    assert (job.worker_id, job.lease_token, job.lease_expires_at) == (None, None, None)
    assert job.result is None and job.last_error is None
    assert job.started_at is None and job.finished_at is None
    # Both times come from the database clock, in the enqueue's own transaction.
    assert before <= job.created_at <= after
    assert before <= job.run_at <= after
    # What was returned is what was stored.
    stored = store.get(job.id)
    assert stored == dataclasses.replace(job, attempt_log=())
    assert stored.attempt_log == ()


def test_enqueue_keeps_every_field(store: SqlStore) -> None:
    job = enqueue(
        store, task_type="send.mail:v2", queue="high-prio", priority=-7, max_attempts=9,
        payload={"to": "a@b"},
    )
    got = store.get(job.id)
    assert (got.task_type, got.queue, got.priority, got.max_attempts) == (
        "send.mail:v2", "high-prio", -7, 9,
    )


PAYLOADS: list[Any] = [
    {"a": 1, "nested": {"list": [1, 2.5, "x", None, True, False], "empty": {}}, "ü": "ß€"},
    [1, "two", 3.25, None, [], {"k": [False]}],
    "just a string with 'quotes' and \"double\" and ünïcödé",
    "",
    42,
    -7,
    2**53,
    2**64 + 1,  # beyond 64 bits: SQLite's NUMERIC affinity used to round this to a float
    3.5,
    3.0,  # ... and to turn this into the integer 3
    -0.0,
    1e-7,
    True,
    False,
    None,
    {},
    [],
]


def assert_same_json(got: Any, expected: Any) -> None:
    assert got == expected
    # 1 == True == 1.0 in Python; the JSON kinds must survive too.
    assert type(got) is type(expected), (got, expected)


def test_payload_of_every_json_kind_round_trips(store: SqlStore) -> None:
    made = [enqueue(store, payload=p) for p in PAYLOADS]
    for job, payload in zip(made, PAYLOADS):
        assert_same_json(job.payload, payload)
        assert_same_json(store.get(job.id).payload, payload)
    claimed = {c.job.id: c.job.payload for c in store.claim("w1", ["default"], 100, 30)}
    assert len(claimed) == len(PAYLOADS)
    for job, payload in zip(made, PAYLOADS):
        assert_same_json(claimed[job.id], payload)


def test_result_of_every_json_kind_round_trips(store: SqlStore) -> None:
    enqueue_many(store, len(PAYLOADS))
    claimed = store.claim("w1", ["default"], 100, 30)
    for c, result in zip(claimed, PAYLOADS):
        assert store.complete(c.lease, result) is True
    for c, result in zip(claimed, PAYLOADS):
        assert_same_json(store.get(c.job.id).result, result)


def test_run_at_in_the_future_is_not_claimable_until_due(store: SqlStore) -> None:
    later = enqueue(store, run_at=future(store, 3600))
    assert store.claim("w1", ["default"], 10, 30) == []
    due = enqueue(store, run_at=past(store, 1))
    claimed = store.claim("w1", ["default"], 10, 30)
    assert [c.job.id for c in claimed] == [due.id]
    assert store.get(later.id).state is JobState.PENDING
    assert approx_time(store.get(later.id).run_at, store.ping() + timedelta(seconds=3600))


def test_run_at_time_zones(store: SqlStore) -> None:
    aware = future(store, 600)
    naive = aware.astimezone(timezone.utc).replace(tzinfo=None)  # taken as UTC
    elsewhere = aware.astimezone(timezone(timedelta(hours=-5, minutes=-30)))
    for run_at in (aware, naive, elsewhere):
        job = enqueue(store, run_at=run_at)
        assert job.run_at.utcoffset() == timedelta(0)
        assert approx_time(store.get(job.id).run_at, aware, timedelta(milliseconds=5))


def test_delay_seconds_is_counted_from_the_database_clock(store: SqlStore) -> None:
    before = store.ping()
    job = enqueue(store, delay_seconds=120)
    after = store.ping()
    assert before + timedelta(seconds=120) <= job.run_at <= after + timedelta(seconds=120)
    assert store.claim("w1", ["default"], 10, 30) == []


def test_short_delay_becomes_claimable_when_due(store: SqlStore) -> None:
    job = enqueue(store, delay_seconds=0.5)
    assert store.claim("w1", ["default"], 10, 30) == []
    deadline = time.monotonic() + 5
    claimed: list[ClaimedJob] = []
    while not claimed and time.monotonic() < deadline:
        time.sleep(0.05)
        claimed = store.claim("w1", ["default"], 10, 30)
    assert [c.job.id for c in claimed] == [job.id]
    assert claimed[0].job.started_at >= job.run_at


def test_idempotent_repeat_returns_the_same_job(store: SqlStore) -> None:
    first = store.enqueue(new_job(payload={"x": 1}, idempotency_key="order-1"))
    again = store.enqueue(new_job(payload={"x": 1}, idempotency_key="order-1"))
    assert first.created is True
    assert again.created is False
    assert again.job.id == first.job.id
    assert again.job.idempotency_key == "order-1"
    assert len(store.list_jobs().items) == 1


def test_idempotent_repeat_after_the_job_moved_on(store: SqlStore) -> None:
    first = store.enqueue(new_job(payload=[1], idempotency_key="k"))
    c = claim_one(store)
    store.complete(c.lease, "r")
    again = store.enqueue(new_job(payload=[1], idempotency_key="k"))
    assert again.created is False
    assert again.job.id == first.job.id
    assert again.job.state is JobState.DONE


def test_same_key_different_request_conflicts(store: SqlStore) -> None:
    base: dict[str, Any] = {
        "task_type": "echo", "payload": {"x": 1}, "queue": "default", "priority": 0,
        "max_attempts": 3, "idempotency_key": "dup",
    }
    first = store.enqueue(new_job(**base)).job
    changes: list[dict[str, Any]] = [
        {"payload": {"x": 2}}, {"payload": None}, {"task_type": "other"},
        {"priority": 5}, {"max_attempts": 7},
    ]
    for change in changes:
        with pytest.raises(IdempotencyConflict) as err:
            store.enqueue(new_job(**{**base, **change}))
        assert err.value.job_id == first.id
        assert err.value.key == "dup"
    # Nothing was written, and the original is untouched.
    assert store.list_jobs().items == [first]
    assert store.enqueue(new_job(**base)).created is False
    # In another queue the key is another key (unique per queue).
    other = store.enqueue(new_job(**{**base, "queue": "other"}))
    assert other.created and other.job.id != first.id


def test_idempotent_repeat_of_every_json_kind(store: SqlStore) -> None:
    for n, payload in enumerate(PAYLOADS):
        first = store.enqueue(new_job(payload=payload, idempotency_key=f"kind-{n}"))
        again = store.enqueue(new_job(payload=payload, idempotency_key=f"kind-{n}"))
        assert (first.created, again.created) == (True, False), payload
        assert again.job.id == first.job.id


def test_max_attempts_below_one_is_refused(store: SqlStore) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_attempts"):
            store.enqueue(new_job(max_attempts=bad))
    assert store.list_jobs().items == []
    # Such a job would otherwise break every claim that picked it, and the good jobs behind it.
    good = enqueue(store, max_attempts=1)
    assert [c.job.id for c in store.claim("w1", ["default"], 10, 30)] == [good.id]


def test_null_key_never_conflicts(store: SqlStore) -> None:
    a = store.enqueue(new_job(payload={"same": True}))
    b = store.enqueue(new_job(payload={"same": True}))
    c = store.enqueue(new_job(payload={"different": True}))
    assert a.created and b.created and c.created
    assert len({a.job.id, b.job.id, c.job.id}) == 3


def test_concurrent_idempotent_enqueues_create_one_job(store: SqlStore) -> None:
    results = run_threads(8, lambda i: store.enqueue(new_job(payload="p", idempotency_key="race")))
    assert len({r.job.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert len(store.list_jobs().items) == 1


# -- enqueue_many ----------------------------------------------------------------------------


def count_jobs(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(jobs)).scalar_one()


def test_enqueue_many_keeps_the_order_and_every_field(store: SqlStore) -> None:
    before = store.ping()
    at = future(store, 600)
    news = [
        new_job(payload=payload, queue=f"q{n % 3}", priority=n - 8, max_attempts=n % 5 + 1)
        for n, payload in enumerate(PAYLOADS)
    ]
    news += [new_job(run_at=at), new_job(delay_seconds=60), new_job(idempotency_key="k1")]
    results = store.enqueue_many(news)
    after = store.ping()
    assert [r.created for r in results] == [True] * len(news)
    ids = [r.job.id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == len(news)
    for new, res in zip(news, results):
        job = res.job
        assert (job.task_type, job.queue, job.priority, job.max_attempts) == (
            new.task_type, new.queue, new.priority, new.max_attempts)
        assert_same_json(job.payload, new.payload)
        assert job.idempotency_key == new.idempotency_key
        assert job.state is JobState.PENDING and job.attempts == 0
        assert before <= job.created_at <= after
        # What was returned is what was stored.
        assert store.get(job.id) == job
    assert all(before <= r.job.run_at <= after for r in results[:len(PAYLOADS)])
    assert approx_time(results[-3].job.run_at, at, timedelta(milliseconds=5))
    delayed = results[-2].job
    assert delayed.created_at + timedelta(seconds=60) == delayed.run_at
    assert count_jobs(store) == len(news)


def test_enqueue_many_of_nothing_is_nothing(store: SqlStore) -> None:
    assert store.enqueue_many([]) == []
    assert count_jobs(store) == 0


def test_enqueue_many_honours_idempotency_keys_in_and_before_the_batch(store: SqlStore) -> None:
    old = store.enqueue(new_job(payload={"v": 1}, idempotency_key="old")).job
    results = store.enqueue_many([
        new_job(payload={"v": 2}, idempotency_key="new"),
        new_job(payload={"v": 1}, idempotency_key="old"),  # repeats an existing job
        new_job(payload="x"),
        new_job(payload={"v": 2}, idempotency_key="new"),  # repeats item 0
        new_job(payload="x"),  # no key: a job of its own
    ])
    assert [r.created for r in results] == [True, False, True, False, True]
    assert results[1].job == old
    assert results[3].job == results[0].job
    assert results[2].job.id != results[4].job.id
    assert count_jobs(store) == 4
    # The whole batch again: nothing new, the same jobs.
    again = store.enqueue_many([
        new_job(payload={"v": 2}, idempotency_key="new"),
        new_job(payload={"v": 1}, idempotency_key="old"),
    ])
    assert [(r.created, r.job.id) for r in again] == [
        (False, results[0].job.id), (False, old.id)]
    assert count_jobs(store) == 4


def test_enqueue_many_conflict_stores_nothing(store: SqlStore) -> None:
    old = store.enqueue(new_job(payload=1, idempotency_key="old")).job
    before = count_jobs(store)
    with pytest.raises(IdempotencyConflict) as err:
        store.enqueue_many([
            new_job(payload=1), new_job(idempotency_key="fresh"),
            new_job(payload=2, idempotency_key="old"),  # a different request
        ])
    assert (err.value.key, err.value.job_id, err.value.index) == ("old", old.id, 2)
    with pytest.raises(IdempotencyConflict) as err:
        store.enqueue_many([
            new_job(payload=1, idempotency_key="twice"), new_job(payload=3),
            new_job(payload=2, idempotency_key="twice"),
        ])
    # The first item's job was rolled back with the batch: there is no job to name.
    assert (err.value.key, err.value.job_id, err.value.index) == ("twice", None, 2)
    assert "items 0 and 2" in str(err.value)
    assert count_jobs(store) == before
    assert store.list_jobs().items == [old]
    # The single enqueue's conflict names no batch item.
    with pytest.raises(IdempotencyConflict) as err:
        store.enqueue(new_job(payload=2, idempotency_key="old"))
    assert (err.value.job_id, err.value.index) == (old.id, None)


def test_enqueue_many_larger_than_one_statement(store: SqlStore) -> None:
    n = 2 * SqlStore.ENQUEUE_CHUNK + 7
    taken = store.enqueue_many([new_job(payload=i, idempotency_key=f"k{i}")
                                for i in range(0, n, 97)])
    results = store.enqueue_many([
        new_job(payload=i, idempotency_key=f"k{i}" if i % 3 == 0 or i % 97 == 0 else None)
        for i in range(n)
    ])
    assert [r.job.payload for r in results] == list(range(n))
    existing = {r.job.payload: r.job.id for r in taken}
    for i, r in enumerate(results):
        assert r.created is (i not in existing)
        if i in existing:
            assert r.job.id == existing[i]
        assert r.job.idempotency_key == (f"k{i}" if i % 3 == 0 or i % 97 == 0 else None)
    assert count_jobs(store) == n
    with store.engine.connect() as conn:
        stored = dict(conn.execute(select(jobs.c.id, jobs.c.payload)).all())
    assert stored == {r.job.id: r.job.payload for r in results}


def test_concurrent_batches_with_shared_keys_create_each_job_once(store: SqlStore) -> None:
    def batch(i: int) -> list[Any]:
        keys = [f"k{(i + j) % 10}" for j in range(10)]
        return store.enqueue_many([new_job(payload=k, idempotency_key=k) for k in keys])

    results = [r for rs in run_threads(6, batch) for r in rs]
    by_key: dict[str, set[int]] = {}
    for r in results:
        by_key.setdefault(r.job.idempotency_key, set()).add(r.job.id)
    assert all(len(ids) == 1 for ids in by_key.values()) and len(by_key) == 10
    assert sum(r.created for r in results) == 10
    assert count_jobs(store) == 10


def _listener(store: SqlStore) -> Any:
    if store.dialect.name != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's (SQLite workers watch the file's commits)")
    dsn = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    return conn


def _heard(conn: Any) -> list[str]:
    return sorted(n.payload for n in conn.notifies(timeout=0.5))


def test_enqueues_notify_the_queues_of_due_jobs_at_commit(store: SqlStore) -> None:
    with _listener(store) as conn:
        store.enqueue_many([
            new_job(queue="a"), new_job(queue="a"), new_job(queue="b", run_at=past(store, 5)),
            new_job(queue="later", delay_seconds=60), new_job(queue="c", delay_seconds=0),
            new_job(queue="future", run_at=future(store, 60)),
        ])
        assert _heard(conn) == ["a", "b", "c"]  # one per queue, none for jobs not yet due
        store.enqueue(new_job(queue="d"))
        store.enqueue(new_job(queue="later", delay_seconds=60))
        assert _heard(conn) == ["d"]
        # A repeat creates nothing, so it wakes nobody; a rolled-back batch neither.
        store.enqueue(new_job(queue="e", payload=1, idempotency_key="e"))
        assert _heard(conn) == ["e"]
        store.enqueue_many([new_job(queue="e", payload=1, idempotency_key="e")])
        with pytest.raises(IdempotencyConflict):
            store.enqueue_many([new_job(queue="f"),
                                new_job(queue="e", payload=2, idempotency_key="e")])
        assert _heard(conn) == []


# -- claim -----------------------------------------------------------------------------------


def test_claim_returns_at_most_limit(store: SqlStore) -> None:
    enqueue_many(store, 5)
    assert store.claim("w1", ["default"], 0, 30) == []  # invariant 6
    assert store.claim("w1", ["default"], -3, 30) == []
    assert store.stats(60).jobs["running"] == 0
    assert len(store.claim("w1", ["default"], 2, 30)) == 2
    assert len(store.claim("w1", ["default"], 2, 30)) == 2
    assert len(store.claim("w1", ["default"], 2, 30)) == 1
    assert store.claim("w1", ["default"], 2, 30) == []


def test_claim_order_priority_then_run_at_then_id(store: SqlStore) -> None:
    t0 = past(store, 100)
    a = enqueue(store, priority=0, run_at=t0 + timedelta(seconds=5))
    b = enqueue(store, priority=10, run_at=t0 + timedelta(seconds=9))
    c = enqueue(store, priority=0, run_at=t0 + timedelta(seconds=1))  # earlier run_at than a
    d = enqueue(store, priority=-5, run_at=t0)
    e = enqueue(store, priority=10, run_at=t0 + timedelta(seconds=9))  # ties b: id decides
    f = enqueue(store, priority=3, run_at=t0 + timedelta(seconds=50))
    expected = [b.id, e.id, f.id, c.id, a.id, d.id]

    claimed = store.claim("w1", ["default"], 100, 30)
    assert [x.job.id for x in claimed] == expected


def test_claim_in_batches_follows_the_same_order(store: SqlStore) -> None:
    rng = random.Random(7)
    t0 = past(store, 1000)
    made = [
        enqueue(
            store, priority=rng.randint(-2, 2), run_at=t0 + timedelta(seconds=rng.randint(0, 5))
        )
        for _ in range(25)
    ]
    expected = [j.id for j in sorted(made, key=lambda j: (-j.priority, j.run_at, j.id))]
    got: list[int] = []
    while batch := store.claim("w1", ["default"], 3, 30):
        assert len(batch) <= 3
        got.extend(c.job.id for c in batch)
    assert got == expected


def test_claim_only_from_the_requested_queues(store: SqlStore) -> None:
    a = enqueue_many(store, 3, queue="a")
    b = enqueue_many(store, 3, queue="b")
    c = enqueue_many(store, 3, queue="c")
    assert store.claim("w1", [], 10, 30) == []
    assert store.claim("w1", ["nope"], 10, 30) == []
    claimed = store.claim("w1", ["a", "c"], 10, 30)
    assert sorted(x.job.id for x in claimed) == sorted(j.id for j in a + c)
    assert all(store.get(j.id).state is JobState.PENDING for j in b)


def test_claim_sets_the_lease_and_the_job_shows_its_running_attempt(store: SqlStore) -> None:
    job = enqueue(store, max_attempts=4)
    before = store.ping()
    (c,) = store.claim("worker-7", ["default"], 5, 42)
    after = store.ping()

    assert c.job.id == job.id
    assert c.job.state is JobState.RUNNING
    assert c.job.attempts == 1
    assert c.job.worker_id == "worker-7"
    assert c.job.lease_token and len(c.job.lease_token) >= 16
    assert before <= c.job.started_at <= after
    assert before + timedelta(seconds=42) <= c.job.lease_expires_at <= after + timedelta(seconds=42)
    assert c.lease == Lease(job_id=job.id, token=c.job.lease_token, attempt=1, max_attempts=4,
                           worker_id="worker-7")

    stored = store.get(job.id)
    assert stored.state is JobState.RUNNING
    assert (stored.worker_id, stored.lease_token) == ("worker-7", c.lease.token)
    assert stored.lease_expires_at == c.job.lease_expires_at
    (att,) = stored.attempt_log  # the lease itself: recorded only when it ends
    assert att.id is None and att.job_id == job.id
    assert att.attempt == 1
    assert att.worker_id == "worker-7"
    assert att.outcome is AttemptOutcome.RUNNING
    assert att.started_at == c.job.started_at
    assert att.finished_at is None and att.error is None and att.traceback is None


def test_a_running_job_is_not_claimed_again(store: SqlStore) -> None:
    enqueue(store)
    claim_one(store)
    assert store.claim("w2", ["default"], 10, 30) == []


def test_tokens_are_unique_across_claims(store: SqlStore) -> None:
    enqueue_many(store, 40)
    tokens: list[str] = []
    for _ in range(3):  # the same jobs claimed again after release get fresh tokens
        claimed = store.claim("w1", ["default"], 40, 30)
        assert len(claimed) == 40
        tokens += [c.lease.token for c in claimed]
        assert store.release([c.lease for c in claimed]) == 40
    assert len(set(tokens)) == len(tokens) == 120


def _claim_until_empty(store: SqlStore, worker: str, seed: int) -> list[int]:
    rng = random.Random(seed)
    got: list[int] = []
    misses = 0
    # SKIP LOCKED may show a claimer an empty set while others hold the rest; only stop after
    # a few empty answers in a row.
    while misses < 3:
        batch = store.claim(worker, ["default"], rng.randint(1, 6), 30)
        if not batch:
            misses += 1
            time.sleep(0.005)
            continue
        misses = 0
        for c in batch:
            assert c.job.worker_id == worker
            got.append(c.job.id)
            if rng.random() < 0.3:  # interleave finishes with claims
                assert store.complete(c.lease, worker)
    return got


def _assert_each_claimed_once(store: SqlStore, ids: list[int], per_worker: list[list[int]]) -> None:
    claimed = [i for w in per_worker for i in w]
    dupes = [i for i, n in Counter(claimed).items() if n > 1]
    assert dupes == [], f"jobs claimed twice: {dupes}"
    assert sorted(claimed) == sorted(ids)
    for w, got in enumerate(per_worker):
        for job_id in got[:5]:
            job = store.get(job_id)
            assert job.attempts == 1 and len(job.attempt_log) == 1
            assert job.attempt_log[0].worker_id == f"w{w}"


def test_concurrent_claimers_on_one_store(store: SqlStore) -> None:
    ids = [j.id for j in enqueue_many(store, 300)]
    per_worker = run_threads(8, lambda i: _claim_until_empty(store, f"w{i}", i))
    _assert_each_claimed_once(store, ids, per_worker)


def test_concurrent_claimers_on_separate_engines(store: SqlStore, settings: Settings) -> None:
    ids = [j.id for j in enqueue_many(store, 300)]
    stores = [SqlStore(make_engine(settings)) for _ in range(8)]
    try:
        per_worker = run_threads(8, lambda i: _claim_until_empty(stores[i], f"w{i}", 100 + i))
    finally:
        for s in stores:
            s.dispose()
    _assert_each_claimed_once(store, ids, per_worker)
    assert store.stats(60).jobs["pending"] == 0


# -- complete / fail / release, guarded by the fencing token ---------------------------------


def test_complete(store: SqlStore) -> None:
    enqueue(store)
    c = claim_one(store)
    before = store.ping()
    assert store.complete(c.lease, {"answer": 42}) is True
    after = store.ping()
    job = store.get(c.job.id)
    assert job.state is JobState.DONE
    assert job.result == {"answer": 42}
    assert before <= job.finished_at <= after
    # The lease is gone; who ran it stays: the row is the record of the successful attempt,
    # and nothing is written to the attempts table for it.
    assert (job.worker_id, job.lease_token, job.lease_expires_at) == ("w1", None, None)
    assert job.attempts == 1
    (att,) = job.attempt_log
    assert (att.id, att.outcome, att.attempt, att.worker_id) == (
        None, AttemptOutcome.DONE, 1, "w1")
    assert (att.started_at, att.finished_at) == (job.started_at, job.finished_at)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(attempts)).scalar() == 0
    # A second completion of the same claim is refused and changes nothing.
    assert store.complete(c.lease, "again") is False
    assert store.get(c.job.id) == job


def test_stale_or_wrong_token_changes_nothing(store: SqlStore) -> None:
    enqueue(store)
    c = claim_one(store)
    before = store.get(c.job.id)
    other_job = dataclasses.replace(c.lease, job_id=c.job.id + 1000)
    for bad in (stale(c.lease), stale(c.lease, ""), other_job):
        assert store.complete(bad, "nope") is False
        assert store.fail(bad, "boom", "tb", 0) is None
        assert store.release([bad]) == 0
        assert store.get(c.job.id) == before
    # The real token still works afterwards.
    assert store.complete(c.lease, "yes") is True


def test_another_jobs_token_does_not_move_this_job(store: SqlStore) -> None:
    enqueue_many(store, 2)
    a, b = store.claim("w1", ["default"], 2, 30)
    crossed = Lease(job_id=a.job.id, token=b.lease.token, attempt=1, max_attempts=3,
                    worker_id="w1")
    assert store.complete(crossed, "x") is False
    assert store.get(a.job.id).state is JobState.RUNNING
    assert store.get(b.job.id).state is JobState.RUNNING


def test_fail_with_attempts_left_goes_back_to_pending_after_the_delay(store: SqlStore) -> None:
    enqueue(store, max_attempts=3)
    c = claim_one(store)
    state = store.fail(c.lease, "ValueError: bad", "Traceback ...\nValueError: bad", 30)
    assert state is JobState.PENDING
    now = store.ping()
    job = store.get(c.job.id)
    assert job.state is JobState.PENDING
    assert job.attempts == 1
    assert approx_time(job.run_at, now + timedelta(seconds=30))
    assert job.run_at > now + timedelta(seconds=25)
    assert job.finished_at is None
    assert job.last_error == "ValueError: bad"
    assert (job.worker_id, job.lease_token, job.lease_expires_at) == (None, None, None)
    (att,) = job.attempt_log
    assert att.outcome is AttemptOutcome.ERROR
    assert att.error == "ValueError: bad"
    assert att.traceback == "Traceback ...\nValueError: bad"
    assert att.finished_at is not None
    # Not claimable before the backoff has passed.
    assert store.claim("w1", ["default"], 10, 30) == []
    # Failing again with the old lease is refused.
    assert store.fail(c.lease, "again", "tb", 0) is None


def test_fail_with_attempts_spent_is_final_and_keeps_every_error(store: SqlStore) -> None:
    job = enqueue(store, max_attempts=3)
    for n in range(1, 4):
        c = claim_one(store)
        assert c.lease.attempt == n
        expected = JobState.PENDING if n < 3 else JobState.FAILED
        assert store.fail(c.lease, f"error {n}", f"traceback {n}", 0) is expected
    before = store.ping()
    got = store.get(job.id)
    assert got.state is JobState.FAILED
    assert got.attempts == 3 == got.max_attempts
    assert got.finished_at is not None and got.finished_at <= before
    assert got.last_error == "error 3"
    assert [(a.attempt, a.outcome, a.error, a.traceback) for a in got.attempt_log] == [
        (n, AttemptOutcome.ERROR, f"error {n}", f"traceback {n}") for n in (1, 2, 3)
    ]
    assert all(a.finished_at is not None for a in got.attempt_log)
    assert store.claim("w1", ["default"], 10, 30) == []


def test_release_does_not_charge_the_attempt(store: SqlStore) -> None:
    job = enqueue(store, max_attempts=1)
    c = claim_one(store)
    assert store.release([c.lease]) == 1
    now = store.ping()
    got = store.get(job.id)
    assert got.state is JobState.PENDING
    assert got.attempts == 0
    assert got.run_at <= now
    assert (got.worker_id, got.lease_token, got.lease_expires_at) == (None, None, None)
    (att,) = got.attempt_log
    assert att.outcome is AttemptOutcome.RELEASED
    assert att.finished_at is not None
    # With max_attempts 1 the job can still run: the released attempt was not charged.
    again = claim_one(store)
    assert again.lease.attempt == 1
    assert again.lease.token != c.lease.token
    assert store.release([c.lease]) == 0  # the old claim cannot release the new one
    assert store.complete(again.lease, "ok") is True
    final = store.get(job.id)
    assert [a.outcome for a in final.attempt_log] == [AttemptOutcome.RELEASED, AttemptOutcome.DONE]


def test_release_many_counts_only_the_held_leases(store: SqlStore) -> None:
    enqueue_many(store, 4)
    claimed = store.claim("w1", ["default"], 4, 30)
    store.complete(claimed[0].lease, None)
    leases = [c.lease for c in claimed] + [stale(claimed[1].lease)]
    assert store.release(leases) == 3
    assert store.release([]) == 0
    states = Counter(store.get(c.job.id).state for c in claimed)
    assert states == {JobState.DONE: 1, JobState.PENDING: 3}


# -- what a handler asks: snooze, cancel, fail at once (issue 13) -----------------------------


def test_snooze_gives_the_attempt_back_and_runs_the_job_after_the_delay(store: SqlStore) -> None:
    job = enqueue(store, max_attempts=1)
    c = claim_one(store)
    assert store.snooze(c.lease, 30, max_snoozes=5) is JobState.PENDING
    now = store.ping()
    got = store.get(job.id)
    assert got.state is JobState.PENDING and got.attempts == 0
    assert approx_time(got.run_at, now + timedelta(seconds=30))
    assert got.run_at > now + timedelta(seconds=25)
    assert (got.worker_id, got.lease_token, got.lease_expires_at) == (None, None, None)
    assert got.finished_at is None and got.last_error is None
    (att,) = got.attempt_log
    assert (att.attempt, att.outcome, att.worker_id) == (1, AttemptOutcome.RELEASED, "w1")
    assert att.error is not None and att.error.startswith("snoozed: runs again in 30s")
    assert att.finished_at is not None
    assert store.claim("w1", ["default"], 10, 30) == []  # not before its time
    # The old claim can neither snooze nor cancel the job again.
    assert store.snooze(c.lease, 0, max_snoozes=5) is None
    assert store.cancel_running(c.lease, "late") is False
    assert store.get(job.id) == got


def test_a_snooze_of_zero_is_due_at_once_and_uncharged_with_max_attempts_one(
    store: SqlStore,
) -> None:
    job = enqueue(store, max_attempts=1)
    for _ in range(3):
        c = claim_one(store)
        assert c.lease.attempt == 1, "a snooze was charged"
        assert store.snooze(c.lease, 0, max_snoozes=10) is JobState.PENDING
    c = claim_one(store)
    assert store.complete(c.lease, "done")
    got = store.get(job.id)
    assert got.state is JobState.DONE and got.attempts == 1
    assert [a.outcome for a in got.attempt_log] == [AttemptOutcome.RELEASED] * 3 + [
        AttemptOutcome.DONE]


def test_the_snooze_past_max_snoozes_in_a_row_fails_the_job(store: SqlStore) -> None:
    job = enqueue(store, max_attempts=5)
    c = claim_one(store)
    store.fail(c.lease, "E: first", "tb", 0)  # an error between: the count starts after it
    for _ in range(2):
        assert store.snooze(claim_one(store).lease, 0, max_snoozes=2) is JobState.PENDING
    last = claim_one(store)
    assert last.lease.attempt == 2
    assert store.snooze(last.lease, 0, max_snoozes=2) is JobState.FAILED
    got = store.get(job.id)
    assert got.state is JobState.FAILED and got.finished_at is not None
    assert got.attempts == 2, "the failing snooze is a charged attempt"
    assert got.last_error is not None and "max_snoozes" in got.last_error
    assert [a.outcome for a in got.attempt_log] == [
        AttemptOutcome.ERROR, AttemptOutcome.RELEASED, AttemptOutcome.RELEASED,
        AttemptOutcome.ERROR]
    # After a manual retry the count starts again: the failure ended the streak.
    store.retry(job.id)
    assert store.snooze(claim_one(store).lease, 0, max_snoozes=2) is JobState.PENDING


def test_max_snoozes_zero_refuses_every_snooze(store: SqlStore) -> None:
    job = enqueue(store, max_attempts=3)
    assert store.snooze(claim_one(store).lease, 5, max_snoozes=0) is JobState.FAILED
    assert store.get(job.id).state is JobState.FAILED


def test_a_graceful_release_ends_a_run_of_snoozes(store: SqlStore) -> None:
    """Only snoozes count: a release at shutdown has no ``snoozed`` note."""
    job = enqueue(store)
    assert store.snooze(claim_one(store).lease, 0, max_snoozes=1) is JobState.PENDING
    assert store.release([claim_one(store).lease]) == 1
    assert store.snooze(claim_one(store).lease, 0, max_snoozes=1) is JobState.PENDING
    assert store.get(job.id).state is JobState.PENDING


def test_cancel_running_ends_the_job_at_once_with_its_reason(store: SqlStore) -> None:
    job = enqueue(store, max_attempts=5)
    c = claim_one(store)
    assert store.cancel_running(c.lease, "the order was withdrawn") is True
    got = store.get(job.id)
    assert got.state is JobState.CANCELLED and got.attempts == 1
    assert got.last_error == "the order was withdrawn" and got.finished_at is not None
    assert (got.worker_id, got.lease_token, got.lease_expires_at) == (None, None, None)
    (att,) = got.attempt_log
    assert (att.outcome, att.error) == (AttemptOutcome.CANCELLED, "the order was withdrawn")
    assert store.claim("w1", ["default"], 10, 30) == []
    assert store.cancel_running(c.lease, "again") is False
    assert store.retry(job.id).state is JobState.PENDING  # as any cancelled job


def test_fail_final_fails_at_once_with_attempts_left(store: SqlStore) -> None:
    job = enqueue(store, max_attempts=5)
    c = claim_one(store)
    before = store.get(job.id).run_at
    assert store.fail(c.lease, "KeyError: 'x'", "tb", 30, final=True) is JobState.FAILED
    got = store.get(job.id)
    assert got.state is JobState.FAILED and got.attempts == 1 and got.run_at == before
    assert got.last_error == "KeyError: 'x'" and got.finished_at is not None
    assert [(a.outcome, a.traceback) for a in got.attempt_log] == [(AttemptOutcome.ERROR, "tb")]
    assert store.fail(c.lease, "again", "tb", 0, final=True) is None


def test_a_stale_token_can_neither_snooze_nor_cancel_nor_fail_at_once(store: SqlStore) -> None:
    enqueue(store)
    c = claim_one(store)
    before = store.get(c.job.id)
    other_job = dataclasses.replace(c.lease, job_id=c.job.id + 1000)
    for bad in (stale(c.lease), stale(c.lease, ""), other_job):
        assert store.snooze(bad, 0, max_snoozes=5) is None
        assert store.snooze(bad, 0, max_snoozes=0) is None  # nor through its failure
        assert store.cancel_running(bad, "nope") is False
        assert store.fail(bad, "boom", "tb", 0, final=True) is None
        assert store.get(c.job.id) == before
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(attempts)).scalar() == 0
    assert store.snooze(c.lease, 0, max_snoozes=5) is JobState.PENDING


# -- heartbeat -------------------------------------------------------------------------------


def test_heartbeat_extends_held_leases(store: SqlStore) -> None:
    store.register_worker("w1", "host", 1, ["default"], 4)
    enqueue_many(store, 3)
    claimed = store.claim("w1", ["default"], 3, 1)
    tokens = [c.lease.token for c in claimed]
    assert store.heartbeat("w1", tokens, 120) == set(tokens)
    now = store.ping()
    for c in claimed:
        assert approx_time(store.get(c.job.id).lease_expires_at, now + timedelta(seconds=120))


def test_heartbeat_returns_only_still_valid_tokens(store: SqlStore) -> None:
    enqueue_many(store, 4)
    a, b, c, d = store.claim("w1", ["default"], 4, 30)
    store.cancel(a.job.id)
    store.complete(b.lease, None)
    valid = store.heartbeat("w1", [a.lease.token, b.lease.token, c.lease.token, "bogus"], 30)
    assert valid == {c.lease.token}
    # A token is only extended for the worker that holds it.
    assert store.heartbeat("w2", [d.lease.token], 30) == set()
    assert store.heartbeat("w1", [], 30) == set()


def test_heartbeat_after_rescue_misses_the_token(store: SqlStore) -> None:
    enqueue(store)
    c = claim_expired(store)
    assert [j.id for j in store.rescue()] == [c.job.id]
    assert store.heartbeat("w1", [c.lease.token], 30) == set()
    assert store.get(c.job.id).lease_expires_at is None


def test_heartbeat_updates_the_worker_row(store: SqlStore) -> None:
    store.register_worker("w1", "h", 1, ["default"], 1)
    first = store.stats(60).workers[0].last_heartbeat_at
    time.sleep(0.05)
    store.heartbeat("w1", [], 30)
    (w,) = store.stats(60).workers
    assert w.last_heartbeat_at > first
    assert approx_time(w.last_heartbeat_at, store.ping())


def test_a_heartbeating_lease_is_never_rescued(store: SqlStore) -> None:
    enqueue(store)
    c = claim_one(store, lease_seconds=0.4)
    deadline = time.monotonic() + 0.9  # over two leases long
    while time.monotonic() < deadline:
        assert store.heartbeat("w1", [c.lease.token], 0.4) == {c.lease.token}
        assert store.rescue() == []
        time.sleep(0.05)
    assert store.complete(c.lease, "finished") is True


# -- rescue ----------------------------------------------------------------------------------


def test_rescue_only_expired_leases(store: SqlStore) -> None:
    enqueue_many(store, 2)
    live = claim_one(store, "live", lease_seconds=60)
    dead = claim_expired(store, "dead")
    before = store.ping()
    rescued = store.rescue()
    assert [j.id for j in rescued] == [dead.job.id]
    r = rescued[0]
    assert r.state is JobState.PENDING
    assert r.attempts == 1  # the lost attempt is charged
    assert (r.worker_id, r.lease_token, r.lease_expires_at) == (None, None, None)
    assert r.last_error and "lease" in r.last_error
    assert r.run_at >= before - SLACK and r.run_at <= store.ping()
    (att,) = store.get(dead.job.id).attempt_log
    assert att.outcome is AttemptOutcome.LOST
    assert att.finished_at is not None
    assert store.get(live.job.id).state is JobState.RUNNING
    assert store.get(live.job.id).lease_token == live.lease.token
    assert store.rescue() == []


def test_rescue_with_attempts_spent_fails_the_job(store: SqlStore) -> None:
    enqueue(store, max_attempts=1)
    c = claim_expired(store)
    (r,) = store.rescue()
    assert r.state is JobState.FAILED
    assert r.finished_at is not None
    got = store.get(c.job.id)
    assert got.state is JobState.FAILED
    assert [a.outcome for a in got.attempt_log] == [AttemptOutcome.LOST]
    assert store.claim("w1", ["default"], 10, 30) == []


def test_rescue_after_a_real_lease_runs_out(store: SqlStore) -> None:
    enqueue(store)
    c = claim_one(store, lease_seconds=0.4)
    assert store.rescue() == []
    time.sleep(0.5)
    assert [j.id for j in store.rescue()] == [c.job.id]


def test_rescue_respects_its_limit(store: SqlStore) -> None:
    enqueue_many(store, 5)
    store.claim("w1", ["default"], 5, -1)
    assert len(store.rescue(limit=2)) == 2
    assert len(store.rescue(limit=10)) == 3
    assert store.rescue() == []


def test_fencing_after_rescue(store: SqlStore) -> None:
    """Invariant 2: the worker that lost its lease cannot change the job any more."""
    enqueue(store)
    old = claim_expired(store, "old-worker")
    store.rescue()
    new = claim_one(store, "new-worker")
    assert new.job.id == old.job.id
    assert new.lease.token != old.lease.token
    assert new.lease.attempt == 2

    assert store.complete(old.lease, "late write") is False
    assert store.fail(old.lease, "late error", "tb", 0) is None
    assert store.release([old.lease]) == 0
    assert store.heartbeat("old-worker", [old.lease.token], 30) == set()
    mid = store.get(new.job.id)
    assert mid.state is JobState.RUNNING and mid.lease_token == new.lease.token
    assert mid.result is None

    assert store.complete(new.lease, "real result") is True
    done = store.get(new.job.id)
    assert done.state is JobState.DONE and done.result == "real result"
    assert [(a.worker_id, a.outcome) for a in done.attempt_log] == [
        ("old-worker", AttemptOutcome.LOST),
        ("new-worker", AttemptOutcome.DONE),
    ]


# -- cancel and retry ------------------------------------------------------------------------


def test_cancel_pending(store: SqlStore) -> None:
    job = enqueue(store)
    got = store.cancel(job.id)
    assert got.id == job.id
    assert got.state is JobState.CANCELLED
    assert got.finished_at is not None and approx_time(got.finished_at, store.ping())
    assert store.claim("w1", ["default"], 10, 30) == []
    again = store.cancel(job.id)
    assert (again.id, again.state) == (job.id, JobState.CANCELLED)
    assert again.finished_at == got.finished_at


def test_cancel_running_closes_the_attempt_and_fences_the_worker(store: SqlStore) -> None:
    enqueue(store)
    c = claim_one(store)
    got = store.cancel(c.job.id)
    assert got.state is JobState.CANCELLED
    assert (got.worker_id, got.lease_token, got.lease_expires_at) == (None, None, None)
    stored = store.get(c.job.id)
    (att,) = stored.attempt_log
    assert att.outcome is AttemptOutcome.CANCELLED
    assert att.finished_at is not None
    assert store.heartbeat("w1", [c.lease.token], 30) == set()
    assert store.complete(c.lease, "too late") is False
    assert store.fail(c.lease, "too late", "tb", 0) is None
    assert store.release([c.lease]) == 0
    assert store.get(c.job.id) == stored
    assert store.cancel(c.job.id).state is JobState.CANCELLED


def test_cancel_final_or_missing_jobs(store: SqlStore) -> None:
    enqueue(store)
    done = claim_one(store)
    store.complete(done.lease, None)
    enqueue(store, max_attempts=1)
    failed = claim_one(store)
    store.fail(failed.lease, "e", "tb", 0)
    for job_id, state in ((done.job.id, "done"), (failed.job.id, "failed")):
        before = store.get(job_id)
        with pytest.raises(InvalidTransition) as err:
            store.cancel(job_id)
        assert err.value.state == state and err.value.action == "cancel"
        assert store.get(job_id) == before
    with pytest.raises(JobNotFound):
        store.cancel(999_999)


def test_retry_failed_and_cancelled(store: SqlStore) -> None:
    enqueue(store, max_attempts=2)
    for _ in range(2):
        c = claim_one(store)
        store.fail(c.lease, "e", "tb", 0)
    assert store.get(c.job.id).state is JobState.FAILED
    got = store.retry(c.job.id)
    assert got.state is JobState.PENDING
    assert got.attempts == 0
    assert got.finished_at is None
    assert got.run_at <= store.ping()
    # A fresh budget: two more attempts before it fails again.
    for n in (1, 2):
        c2 = claim_one(store)
        assert c2.lease.attempt == n
        store.fail(c2.lease, "e", "tb", 0)
    assert len(store.get(c.job.id).attempt_log) == 4

    cancelled = enqueue(store)
    store.cancel(cancelled.id)
    got = store.retry(cancelled.id)
    assert got.state is JobState.PENDING and got.attempts == 0
    assert claim_one(store).job.id == cancelled.id


def test_retry_other_states_is_invalid(store: SqlStore) -> None:
    pending = enqueue(store)
    running = enqueue(store)
    done = enqueue(store)
    claimed = {c.job.id: c for c in store.claim("w1", ["default"], 3, 30)}
    store.release([claimed[pending.id].lease])
    store.complete(claimed[done.id].lease, None)
    for job, state in ((pending, "pending"), (running, "running"), (done, "done")):
        before = store.get(job.id)
        assert before.state.value == state
        with pytest.raises(InvalidTransition) as err:
            store.retry(job.id)
        assert err.value.state == state and err.value.action == "retry"
        assert store.get(job.id) == before
    with pytest.raises(JobNotFound):
        store.retry(123_456)


def test_get_missing_job(store: SqlStore) -> None:
    with pytest.raises(JobNotFound) as err:
        store.get(424242)
    assert err.value.job_id == 424242


def test_get_without_attempts(store: SqlStore) -> None:
    enqueue(store)
    c = claim_one(store)
    assert store.get(c.job.id, with_attempts=False).attempt_log == ()
    assert len(store.get(c.job.id).attempt_log) == 1


# -- list_jobs -------------------------------------------------------------------------------


def test_list_jobs_filters(store: SqlStore) -> None:
    a1 = enqueue_many(store, 3, queue="a", task_type="t1")
    a2 = enqueue_many(store, 2, queue="a", task_type="t2")
    b1 = enqueue_many(store, 4, queue="b", task_type="t1")
    claimed = store.claim("w1", ["b"], 2, 30)

    def ids(**kw: Any) -> list[int]:
        return [j.id for j in store.list_jobs(limit=100, **kw).items]

    everything = sorted((j.id for j in a1 + a2 + b1), reverse=True)
    assert ids() == everything  # newest first
    assert ids(queue="a") == sorted((j.id for j in a1 + a2), reverse=True)
    assert ids(task_type="t1") == sorted((j.id for j in a1 + b1), reverse=True)
    assert ids(queue="a", task_type="t2") == sorted((j.id for j in a2), reverse=True)
    assert ids(state=JobState.RUNNING) == sorted((c.job.id for c in claimed), reverse=True)
    assert ids(state="running") == ids(state=JobState.RUNNING)
    assert ids(state=JobState.PENDING, queue="b") == sorted(
        (j.id for j in b1 if j.id not in {c.job.id for c in claimed}), reverse=True
    )
    assert ids(state=JobState.DONE) == []
    assert ids(queue="nope") == []
    listed = store.list_jobs(state=JobState.RUNNING).items
    assert all(j.state is JobState.RUNNING and j.attempt_log == () for j in listed)


def test_list_jobs_pagination_has_no_gaps_or_duplicates(store: SqlStore) -> None:
    made = enqueue_many(store, 30)
    for limit in (1, 7, 10, 30, 50):
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            page = store.list_jobs(limit=limit, cursor=cursor)
            pages += 1
            assert len(page.items) <= limit
            seen += [j.id for j in page.items]
            if page.next_cursor is None:
                break
            assert len(page.items) == limit
            cursor = page.next_cursor
        assert seen == sorted((j.id for j in made), reverse=True), limit
        assert pages == -(-30 // limit), limit  # and no empty trailing page


def test_list_jobs_pagination_with_a_filter_and_inserts_between_pages(store: SqlStore) -> None:
    a = enqueue_many(store, 12, queue="a")
    enqueue_many(store, 5, queue="b")
    page1 = store.list_jobs(queue="a", limit=5)
    enqueue_many(store, 3, queue="a")  # newer than every cursor: must not show up later
    page2 = store.list_jobs(queue="a", limit=5, cursor=page1.next_cursor)
    page3 = store.list_jobs(queue="a", limit=5, cursor=page2.next_cursor)
    seen = [j.id for p in (page1, page2, page3) for j in p.items]
    assert seen == sorted((j.id for j in a), reverse=True)
    assert page3.next_cursor is None


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def test_list_jobs_bad_cursor(store: SqlStore) -> None:
    job = enqueue(store)
    assert store.list_jobs(cursor=encode_cursor(job.id + 1)).items == [job]
    assert store.list_jobs(cursor=encode_cursor(2**63 - 1)).items == [job]  # the largest id
    bad = ["garbage!", "", "abc", "AAAA", "x" * 40, encode_cursor(0), _b64("j-5"), _b64("jabc"),
           _b64("k5"), _b64("j"), "%%%%", _b64("j+5"), _b64("j 5"), _b64("j1_0"), _b64("j²"),
           encode_cursor(2**63), encode_cursor(10**30)]
    for cursor in bad:
        with pytest.raises(InvalidCursor):
            store.list_jobs(cursor=cursor)


def test_list_jobs_empty(store: SqlStore) -> None:
    page = store.list_jobs()
    assert page.items == [] and page.next_cursor is None


# -- stats and workers -----------------------------------------------------------------------


def test_stats_of_an_empty_store(store: SqlStore) -> None:
    s = store.stats(60)
    assert s.jobs == {"pending": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0, "waiting": 0}
    assert s.queues == {}
    assert s.workers == []
    assert s.oldest_pending_age_seconds is None
    assert s.finished_last_minute == 0


def test_stats_counts_per_state_and_queue(store: SqlStore) -> None:
    enqueue_many(store, 3, queue="q1")
    enqueue_many(store, 2, queue="q2")
    a, b, c = store.claim("w1", ["q1"], 3, 30)
    store.complete(a.lease, None)
    store.cancel(b.job.id)
    (d,) = store.claim("w1", ["q2"], 1, 30)
    enqueue(store, queue="q2", max_attempts=1)
    store.fail(d.lease, "e", "tb", 0)  # attempts left: back to pending

    s = store.stats(60)
    assert s.jobs == {"pending": 3, "running": 1, "done": 1, "failed": 0, "cancelled": 1, "waiting": 0}
    assert set(s.jobs) == {st.value for st in JobState}
    assert s.queues == {
        "q1": {"pending": 0, "running": 1, "done": 1, "failed": 0, "cancelled": 1, "waiting": 0},
        "q2": {"pending": 3, "running": 0, "done": 0, "failed": 0, "cancelled": 0, "waiting": 0},
    }
    assert s.finished_last_minute == 2


def test_stats_oldest_pending_age(store: SqlStore) -> None:
    enqueue(store, run_at=future(store, 3600))  # not due: does not count as waiting
    assert store.stats(60).oldest_pending_age_seconds is None
    enqueue(store, run_at=past(store, 100))
    enqueue(store, run_at=past(store, 10))
    age = store.stats(60).oldest_pending_age_seconds
    assert age is not None and 100 <= age < 105
    # A running job is not waiting.
    claim_one(store)
    age = store.stats(60).oldest_pending_age_seconds
    assert age is not None and 10 <= age < 15


def test_stats_finished_last_minute_forgets_older_finishes(store: SqlStore) -> None:
    enqueue_many(store, 2)
    a, b = store.claim("w1", ["default"], 2, 30)
    store.complete(a.lease, None)
    store.complete(b.lease, None)
    assert store.stats(60).finished_last_minute == 2
    with store.engine.begin() as conn:  # age one finish by two minutes, on the db clock
        conn.execute(
            update(jobs).where(jobs.c.id == a.job.id).values(finished_at=seconds_from_now(-120))
        )
    assert store.stats(60).finished_last_minute == 1


def test_stats_lists_live_workers_only(store: SqlStore) -> None:
    store.register_worker("w-old", "host-a", 11, ["default", "mail"], 4)
    store.register_worker("w-new", "host-b", 22, ["default"], 2)
    with store.engine.begin() as conn:  # w-old stopped heartbeating five minutes ago
        conn.execute(
            update(workers)
            .where(workers.c.id == "w-old")
            .values(last_heartbeat_at=seconds_from_now(-300))
        )
    s = store.stats(60)
    assert [w.id for w in s.workers] == ["w-new"]
    w = s.workers[0]
    assert (w.host, w.pid, w.queues) == ("host-b", 22, ("default",))
    assert approx_time(w.started_at, store.ping())
    assert approx_time(w.last_heartbeat_at, store.ping())
    assert sorted(x.id for x in store.stats(600).workers) == ["w-new", "w-old"]
    # A heartbeat brings the silent worker back.
    store.heartbeat("w-old", [], 30)
    assert sorted(x.id for x in store.stats(60).workers) == ["w-new", "w-old"]


def test_register_again_replaces_the_worker(store: SqlStore) -> None:
    store.register_worker("w1", "h1", 1, ["a"], 1)
    store.register_worker("w1", "h2", 2, ["b", "c"], 3)
    (w,) = store.stats(60).workers
    assert (w.host, w.pid, w.queues) == ("h2", 2, ("b", "c"))


def test_prune_and_deregister_workers(store: SqlStore) -> None:
    store.register_worker("silent", "h", 1, ["default"], 1)
    store.register_worker("alive", "h", 2, ["default"], 1)
    store.register_worker("leaving", "h", 3, ["default"], 1)
    with store.engine.begin() as conn:
        conn.execute(
            update(workers)
            .where(workers.c.id == "silent")
            .values(last_heartbeat_at=seconds_from_now(-120))
        )
    assert store.prune_workers(60) == 1
    assert store.prune_workers(60) == 0
    assert sorted(w.id for w in store.stats(3600).workers) == ["alive", "leaving"]
    store.deregister_worker("leaving")
    store.deregister_worker("never-existed")
    assert [w.id for w in store.stats(3600).workers] == ["alive"]


# -- the database clock (invariant 5) --------------------------------------------------------


def test_ping_is_the_database_clock(store: SqlStore) -> None:
    a = store.ping()
    time.sleep(0.01)
    b = store.ping()
    assert a.tzinfo is not None and a.utcoffset() == timedelta(0)
    assert a < b


def test_every_timestamp_is_taken_from_the_database(store: SqlStore) -> None:
    before = store.ping()
    enqueue(store)
    c = claim_one(store, lease_seconds=10)
    store.complete(c.lease, None)
    after = store.ping()
    job = store.get(c.job.id)
    for t in (job.created_at, job.run_at, job.started_at, job.finished_at,
              job.attempt_log[0].started_at, job.attempt_log[0].finished_at):
        assert t is not None and before <= t <= after
    assert before + timedelta(seconds=10) <= c.job.lease_expires_at <= after + timedelta(seconds=10)


# -- invariant 4 and the transitions under random operations ---------------------------------


def test_attempts_never_exceed_max_attempts_under_claim_fail_cycles(store: SqlStore) -> None:
    made = [enqueue(store, max_attempts=m) for m in (1, 2, 3, 5) for _ in range(3)]
    for _ in range(10):
        claimed = store.claim("w1", ["default"], 100, 30)
        if not claimed:
            break
        for c in claimed:
            assert c.lease.attempt <= c.lease.max_attempts
            store.fail(c.lease, "e", "tb", 0)
    for j in made:
        got = store.get(j.id)
        assert got.state is JobState.FAILED
        assert got.attempts == got.max_attempts == j.max_attempts
        assert len(got.attempt_log) == j.max_attempts
        assert [a.attempt for a in got.attempt_log] == list(range(1, j.max_attempts + 1))


def _check_job(job: Job, model: dict[str, Any]) -> None:
    assert job.state.value == model["state"], (job, model)
    assert 0 <= job.attempts <= job.max_attempts  # invariant 4
    assert job.attempts == model["attempts"]
    running = [a for a in job.attempt_log if a.outcome is AttemptOutcome.RUNNING]
    if job.state is JobState.RUNNING:
        # Invariant 2: exactly one live attempt, and it is the one the job's lease names.
        assert job.lease_token is not None and job.worker_id is not None
        assert job.lease_expires_at is not None
        assert len(running) == 1 and running[0].attempt == job.attempts
    elif job.state is JobState.DONE:
        assert job.worker_id is not None and (job.lease_token, job.lease_expires_at) == (None,) * 2
        assert job.attempt_log[-1].worker_id == job.worker_id
    else:
        assert (job.worker_id, job.lease_token, job.lease_expires_at) == (None, None, None)
        assert running == []
    assert [a.outcome.value for a in job.attempt_log] == model["outcomes"]
    for a in job.attempt_log:
        assert (a.finished_at is None) == (a.outcome is AttemptOutcome.RUNNING)
    assert (job.finished_at is not None) == job.state.is_final


def test_random_operations_keep_the_invariants(store: SqlStore) -> None:
    """A seeded random walk over every operation, checked against a small model after each step."""
    rng = random.Random(20261128)
    model: dict[int, dict[str, Any]] = {}
    held: dict[int, Lease] = {}  # the current claim of each running job
    old: list[Lease] = []  # leases that were lost: every write with them must be refused
    expired: set[int] = set()  # running jobs whose lease has run out
    seen: Counter[str] = Counter()  # which interesting paths the walk took

    for step in range(200):
        op = rng.choice(
            ["enqueue", "enqueue", "claim", "claim", "complete", "fail", "fail", "release",
             "expire", "rescue", "cancel", "retry", "stale", "heartbeat"]
        )
        touched: set[int] = set()
        if op == "enqueue" or not model:
            job = enqueue(store, max_attempts=rng.randint(1, 3), priority=rng.randint(0, 2))
            model[job.id] = {"state": "pending", "attempts": 0, "outcomes": []}
            touched.add(job.id)
        elif op in ("claim", "expire"):
            limit = rng.randint(0, 4)
            pending = [i for i, m in model.items() if m["state"] == "pending"]
            claimed = store.claim("w", ["default"], limit, -1 if op == "expire" else 30)
            assert len(claimed) == min(limit, len(pending))
            if claimed:
                # Highest priorities first: nothing left behind outranks what was taken.
                top = min(c.job.priority for c in claimed)
                left = [i for i in pending if i not in {c.job.id for c in claimed}]
                assert all(store.get(i).priority <= top for i in left)
            for c in claimed:
                m = model[c.job.id]
                assert m["state"] == "pending"
                m.update(state="running", attempts=m["attempts"] + 1)
                m["outcomes"].append("running")
                held[c.job.id] = c.lease
                if op == "expire":
                    expired.add(c.job.id)
                touched.add(c.job.id)
        elif op in ("complete", "fail", "release", "heartbeat") and held:
            job_id = rng.choice(sorted(held))
            lease = held.pop(job_id)
            expired.discard(job_id)  # finished, or extended by the heartbeat
            m = model[job_id]
            if op == "complete":
                assert store.complete(lease, step) is True
                m["state"] = "done"
                m["outcomes"][-1] = "done"
            elif op == "fail":
                state = store.fail(lease, f"e{step}", f"tb{step}", 0)
                expected = "failed" if m["attempts"] >= lease.max_attempts else "pending"
                assert state is not None and state.value == expected
                m["state"] = expected
                m["outcomes"][-1] = "error"
                seen["fail:" + expected] += 1
            elif op == "release":
                assert store.release([lease]) == 1
                seen["release"] += 1
                m["state"] = "pending"
                m["attempts"] -= 1
                m["outcomes"][-1] = "released"
            else:
                assert store.heartbeat("w", [lease.token], 30) == {lease.token}
                held[job_id] = lease
            if op != "heartbeat":
                old.append(lease)
            touched.add(job_id)
        elif op == "rescue":
            rescued = store.rescue()
            # Exactly the expired leases were rescued.
            assert {j.id for j in rescued} == expired
            expired.clear()
            for j in rescued:
                m = model[j.id]
                lease = held.pop(j.id)
                old.append(lease)
                m["state"] = "failed" if m["attempts"] >= j.max_attempts else "pending"
                m["outcomes"][-1] = "lost"
                touched.add(j.id)
                seen["rescue:" + m["state"]] += 1
        elif op == "cancel":
            job_id = rng.choice(sorted(model))
            m = model[job_id]
            if m["state"] in ("pending", "running", "cancelled"):
                assert store.cancel(job_id).state is JobState.CANCELLED
                if m["state"] == "running":
                    old.append(held.pop(job_id))
                    expired.discard(job_id)
                    m["outcomes"][-1] = "cancelled"
                    seen["cancel:running"] += 1
                m["state"] = "cancelled"
            else:
                with pytest.raises(InvalidTransition):
                    store.cancel(job_id)
            touched.add(job_id)
        elif op == "retry":
            job_id = rng.choice(sorted(model))
            m = model[job_id]
            if m["state"] in ("failed", "cancelled"):
                assert store.retry(job_id).state is JobState.PENDING
                m.update(state="pending", attempts=0)
                seen["retry"] += 1
            else:
                with pytest.raises(InvalidTransition):
                    store.retry(job_id)
            touched.add(job_id)
        elif op == "stale" and old:
            lease = rng.choice(old)
            before = store.get(lease.job_id)
            assert store.complete(lease, "late") is False
            assert store.fail(lease, "late", "tb", 0) is None
            assert store.release([lease]) == 0
            assert store.heartbeat("w", [lease.token], 30) == set()
            assert store.get(lease.job_id) == before
            seen["stale"] += 1
        for job_id in touched:
            _check_job(store.get(job_id), model[job_id])

    for job_id, m in model.items():
        _check_job(store.get(job_id), m)
    for path in ("fail:pending", "fail:failed", "rescue:pending", "rescue:failed",
                 "cancel:running", "retry", "stale", "release"):
        assert seen[path] > 0, f"the walk never took {path}: {dict(seen)}"
    assert store.stats(60).jobs == {
        st.value: sum(1 for m in model.values() if m["state"] == st.value) for st in JobState
    }


def test_heartbeat_with_registration_rewrites_a_pruned_worker_row(store: SqlStore) -> None:
    from jobq.types import WorkerRegistration

    reg = WorkerRegistration("w-zombie", "host-z", 4242, ("default", "mail"), 3)
    store.register_worker(reg.id, reg.host, reg.pid, reg.queues, reg.concurrency)
    assert store.prune_workers(-10) == 1  # as if it had been silent for too long
    store.heartbeat(reg.id, [], 30)
    assert store.stats(live_worker_seconds=60).workers == []
    store.heartbeat(reg.id, [], 30, registration=reg)
    (w,) = store.stats(live_worker_seconds=60).workers
    assert (w.id, w.host, w.pid, w.queues) == ("w-zombie", "host-z", 4242, ("default", "mail"))
    store.heartbeat(reg.id, [], 30, registration=reg)  # present: no second row
    assert len(store.stats(live_worker_seconds=60).workers) == 1
