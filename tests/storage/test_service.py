"""JobService: defaults, task checks and refusal of unstorable jobs, on both backends."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

import jobq
from jobq.errors import (
    IdempotencyConflict,
    InvalidJob,
    JobNotFound,
    QueueNotFound,
    StoreUnavailable,
    UnknownTask,
)
from jobq.coalesce import GroupCommit
from jobq.registry import TaskRegistry, load_registry
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.store import make_engine
from jobq.types import NewJob


@pytest.fixture
def svc(store: SqlStore, settings: Settings) -> JobService:
    registry = TaskRegistry()
    registry.register("plain", lambda payload: payload)
    registry.register("picky", lambda payload: payload, max_attempts=7)
    return JobService(store, registry, settings)


def test_max_attempts_comes_from_the_job_then_the_task_then_the_settings(
    svc: JobService, settings: Settings
) -> None:
    assert svc.enqueue("plain").job.max_attempts == settings.max_attempts == 3
    assert svc.enqueue("picky").job.max_attempts == 7
    assert svc.enqueue("picky", max_attempts=2).job.max_attempts == 2


def test_unknown_task_is_refused_naming_the_known_ones(svc: JobService) -> None:
    with pytest.raises(UnknownTask) as err:
        svc.enqueue("nope")
    assert err.value.known == ["picky", "plain"]
    assert "picky, plain" in str(err.value)
    assert svc.list_jobs().items == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"payload": "a\x00b"}, "payload"),
        ({"payload": {"k": ["\ud800"]}}, "payload"),
        ({"payload": float("nan")}, "payload"),
        ({"payload": {"x": float("inf")}}, "payload"),
        ({"priority": 5000}, "priority"),
        ({"priority": True}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"queue": "bad queue"}, "queue"),
        ({"queue": "q\n"}, "queue"),
        ({"delay_seconds": -1}, "delay_seconds"),
        ({"delay_seconds": float("nan")}, "delay_seconds"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k\x00"}, "idempotency_key"),
    ],
)
def test_unstorable_jobs_are_refused_before_the_database_sees_them(
    svc: JobService, kwargs: dict, field: str
) -> None:
    with pytest.raises(InvalidJob) as err:
        svc.enqueue("plain", **kwargs)
    assert err.value.field == field
    assert svc.list_jobs().items == []


def test_deep_payloads_are_refused_shallow_ones_kept(svc: JobService) -> None:
    deep: object = "leaf"
    for _ in range(64):
        deep = [deep]
    assert svc.get(svc.enqueue("plain", deep).job.id).payload == deep
    with pytest.raises(InvalidJob):
        svc.enqueue("plain", [deep])


# -- enqueue_many ----------------------------------------------------------------------------


def test_enqueue_many_applies_the_same_defaults_and_checks(svc: JobService) -> None:
    results = svc.enqueue_many([
        {"task_type": "plain"},
        {"task_type": "picky", "payload": {"a": 1}, "queue": "q", "priority": 5},
        {"task_type": "picky", "max_attempts": 2, "idempotency_key": "k"},
    ])
    assert [r.job.max_attempts for r in results] == [3, 7, 2]
    assert [r.job.queue for r in results] == ["default", "q", "default"]
    assert results[1].job.payload == {"a": 1} and results[1].job.priority == 5
    assert [svc.get(r.job.id) for r in results] == [r.job for r in results]
    assert svc.enqueue_many([]) == []


@pytest.mark.parametrize(
    ("bad", "error", "field"),
    [
        ({"task_type": "nope"}, UnknownTask, None),
        ({"task_type": "plain", "payload": float("nan")}, InvalidJob, "payload"),
        ({"task_type": "plain", "priority": 10**6}, InvalidJob, "priority"),
        ({"task_type": "plain", "queue": "theirs"}, QueueNotFound, None),
    ],
)
def test_enqueue_many_names_the_bad_item_and_stores_nothing(
    svc: JobService, bad: dict[str, Any], error: type[Exception], field: str | None
) -> None:
    specs = [{"task_type": "plain", "queue": "mine"}, {"task_type": "picky", "queue": "mine"}]
    with pytest.raises(error) as err:
        svc.enqueue_many([*specs, {"queue": "mine", **bad}], allowed_queues={"mine"})
    assert err.value.index == 2
    if field is not None:
        assert err.value.field == field
    assert svc.list_jobs().items == []


def test_idempotency_keys_are_unique_within_a_queue_only(svc: JobService) -> None:
    theirs = svc.enqueue("plain", 1, queue="theirs", idempotency_key="k").job
    batch = [{"task_type": "plain", "queue": "mine"},
             {"task_type": "plain", "payload": 2, "queue": "mine", "idempotency_key": "k"},
             {"task_type": "plain", "payload": 3, "queue": "other", "idempotency_key": "k"}]
    made = svc.enqueue_many(batch, allowed_queues={"mine", "other"})
    assert [r.created for r in made] == [True, True, True]
    assert len({theirs.id, *(r.job.id for r in made)}) == 4
    # Repeated, each keyed item gets its own queue's job back; changed, it conflicts there.
    again = svc.enqueue_many(batch)
    assert [r.created for r in again] == [True, False, False]
    assert [r.job.id for r in again[1:]] == [r.job.id for r in made[1:]]
    with pytest.raises(IdempotencyConflict) as err:
        svc.enqueue("plain", 9, queue="other", idempotency_key="k")
    assert err.value.job_id == made[2].job.id
    assert svc.enqueue("plain", 1, queue="theirs", idempotency_key="k").job.id == theirs.id


def test_connect_is_the_python_client(db_url: str) -> None:
    with jobq.connect(db_url, max_attempts=4) as q:
        one = q.enqueue("echo", {"n": 1})
        many = q.enqueue_many([{"task_type": "echo", "payload": n} for n in range(3)])
        assert one.created and all(r.created for r in many)
        assert one.job.max_attempts == 4
        assert [q.get(r.job.id).payload for r in many] == [0, 1, 2]


# -- group commit ----------------------------------------------------------------------------


def _together(n: int, target: Any) -> list[Any]:
    """``target(i)`` in n threads released together; each result, or the exception raised."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def body(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            out[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return out


def test_concurrent_enqueues_share_commits(svc: JobService, store: SqlStore) -> None:
    commits: list[int] = []

    def count(conn: Any) -> None:
        commits.append(1)

    event.listen(store.engine, "commit", count)
    try:
        results = _together(32, lambda i: [svc.enqueue("plain", {"i": i, "n": n})
                                           for n in range(4)])
    finally:
        event.remove(store.engine, "commit", count)
    jobs = [r for rs in results for r in rs]
    assert all(r.created for r in jobs)
    assert len({r.job.id for r in jobs}) == 128
    for r in jobs:  # each caller got its own job, committed
        assert svc.get(r.job.id).payload == r.job.payload
    assert len(svc.list_jobs(limit=500).items) == 128
    assert len(commits) < 128, "no two enqueues shared a commit"


def test_a_conflict_fails_only_its_own_caller(svc: JobService) -> None:
    taken = svc.enqueue("plain", "first", idempotency_key="taken").job

    def one(i: int) -> Any:
        if i % 8 == 0:  # the same key with another payload: a conflict
            return svc.enqueue("plain", f"other {i}", idempotency_key="taken")
        if i % 8 == 1:  # an identical repeat: the existing job
            return svc.enqueue("plain", "first", idempotency_key="taken")
        return svc.enqueue("plain", i, idempotency_key=f"own-{i}")

    results = _together(32, one)
    for i, r in enumerate(results):
        if i % 8 == 0:
            assert isinstance(r, IdempotencyConflict) and r.job_id == taken.id and r.index is None
        elif i % 8 == 1:
            assert not r.created and r.job.id == taken.id
        else:
            assert r.created and svc.get(r.job.id).payload == i
    assert len(svc.list_jobs(limit=500).items) == 1 + 24


def test_an_unavailable_database_fails_every_waiter(settings: Settings, tmp_path: Path) -> None:
    if settings.is_sqlite:
        url = f"sqlite:///{tmp_path / 'no-such-dir' / 'jobq.db'}"
    else:
        url = "postgresql://postgres@127.0.0.1:1/jobq_nowhere"
    bad = load_settings(database_url=url, db_timeout_seconds=2)
    service = JobService(SqlStore(make_engine(bad)), load_registry(bad.tasks), bad)
    try:
        results = _together(16, lambda i: service.enqueue("echo", i))
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert len({id(r) for r in results}) == 16  # one error object per caller
    finally:
        service.close()


def test_close_writes_what_waits_and_stops_the_flusher(svc: JobService) -> None:
    # A lone caller in a thread writes its job itself: no flusher is needed for it.
    alone = svc.enqueue("plain", 0)
    assert svc._group._thread is None
    # An event loop never writes itself: it hands over, and the flusher starts.
    first = asyncio.run(svc.enqueue_async("plain", 1))
    flusher = svc._group._thread
    assert flusher is not None and flusher.is_alive()
    svc.close()
    assert not flusher.is_alive()
    svc.close()  # again: nothing happens
    # Afterwards each enqueue is its own transaction.
    later = svc.enqueue("plain", 2)
    assert svc._group._thread is flusher
    assert {j.id for j in svc.list_jobs().items} == {alone.job.id, first.job.id, later.job.id}


def test_a_coalesced_batch_with_conflicts_writes_the_others_as_a_batch(store: SqlStore) -> None:
    """The first write is held until five more jobs wait, so they form one batch for sure."""
    old = store.enqueue(NewJob("echo", payload=1, idempotency_key="old")).job
    gate, batches = threading.Event(), []

    def enqueue_many(news: Any) -> Any:
        batches.append([n.payload for n in news])
        if len(batches) == 1:
            gate.wait(10)
        return store.enqueue_many(news)

    group = GroupCommit(enqueue_many, store.enqueue)
    news = [
        NewJob("echo", payload="first"),
        NewJob("echo", payload="a"),
        NewJob("echo", payload=2, idempotency_key="old"),  # conflicts with the table
        NewJob("echo", payload="b", idempotency_key="k"),
        NewJob("echo", payload="c", idempotency_key="k"),  # conflicts with the job before
        NewJob("echo", payload="d"),
    ]
    out: list[Any] = [None] * len(news)

    def submit(i: int) -> None:
        try:
            out[i] = group.enqueue(news[i])
        except Exception as exc:  # noqa: BLE001 - checked below
            out[i] = exc

    threads = [threading.Thread(target=submit, args=(0,))]
    threads[0].start()
    while not batches:
        time.sleep(0.001)
    for i in range(1, len(news)):  # in order, so that "b" is ahead of "c"
        threads.append(threading.Thread(target=submit, args=(i,)))
        threads[-1].start()
        while len(group._waiting) < i:
            time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join(10)
    group.close()
    assert batches == [["first"], ["a", 2, "b", "c", "d"], ["a", "b", "c", "d"], ["a", "b", "d"]]
    assert isinstance(out[2], IdempotencyConflict) and out[2].job_id == old.id
    assert isinstance(out[4], IdempotencyConflict) and out[4].job_id == out[3].job.id
    assert out[4].index is None and out[2].index is None
    for i in (0, 1, 3, 5):
        assert out[i].created and store.get(out[i].job.id).payload == news[i].payload
    assert len(store.list_jobs().items) == 1 + 4


def test_batches_share_a_group_commit_and_one_batch_conflict_fails_only_that_batch(
    store: SqlStore,
) -> None:
    """Batches and single jobs waiting together are written as one group; a batch that
    conflicts gets its own error, with the index of the item within that batch, and stores
    nothing, while the others are stored."""
    old = store.enqueue(NewJob("echo", payload=1, idempotency_key="old")).job
    gate, groups = threading.Event(), []

    def enqueue_many(news: Any) -> Any:
        groups.append([n.payload for n in news])
        if len(groups) == 1:
            gate.wait(10)
        return store.enqueue_many(news)

    group = GroupCommit(enqueue_many, store.enqueue)
    calls: list[Any] = [
        [NewJob("echo", payload="first")],
        [NewJob("echo", payload="a1"), NewJob("echo", payload="a2")],
        [NewJob("echo", payload="b1"), NewJob("echo", payload=2, idempotency_key="old")],
        NewJob("echo", payload="single"),
        [NewJob("echo", payload="c1", idempotency_key="c"),
         NewJob("echo", payload="c1", idempotency_key="c")],  # a repeat within the batch
    ]
    out: list[Any] = [None] * len(calls)

    def submit(i: int) -> None:
        try:
            call = calls[i]
            out[i] = (group.submit_many(call) if isinstance(call, list)
                      else group.submit(call)).result(10)
        except Exception as exc:  # noqa: BLE001 - checked below
            out[i] = exc

    threads = [threading.Thread(target=submit, args=(0,))]
    threads[0].start()
    while not groups:
        time.sleep(0.001)
    for i in range(1, len(calls)):
        threads.append(threading.Thread(target=submit, args=(i,)))
        threads[-1].start()
        while len(group._waiting) < i:
            time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join(10)
    group.close()
    assert groups == [
        ["first"],
        ["a1", "a2", "b1", 2, "single", "c1", "c1"],  # one group; "old" conflicts
        ["a1", "a2", "single", "c1", "c1"],  # without the conflicting batch
        ["b1", 2],  # that batch alone, for its own answer
    ]
    assert isinstance(out[2], IdempotencyConflict)
    assert out[2].job_id == old.id and out[2].index == 1
    assert [r.created for r in out[1]] == [True, True]
    assert out[3].created and out[3].job.payload == "single"
    assert [r.created for r in out[4]] == [True, False]
    assert out[4][0].job.id == out[4][1].job.id
    payloads = sorted(str(j.payload) for j in store.list_jobs().items)
    assert payloads == sorted(["1", "first", "a1", "a2", "single", "c1"])


def test_an_empty_batch_is_no_write(store: SqlStore) -> None:
    group = GroupCommit(store.enqueue_many, store.enqueue)
    assert group.submit_many([]).result(1) == []
    assert group._thread is None


def test_a_cancelled_waiter_is_not_written_and_fails_no_one_else(store: SqlStore) -> None:
    """An API request whose task was cancelled (client gone, timeout) cancels its future:
    its job is left out of the group, and the others are written and answered as usual."""
    gate, groups = threading.Event(), []

    def enqueue_many(news: Any) -> Any:
        groups.append([n.payload for n in news])
        if len(groups) == 1:
            gate.wait(10)
        return store.enqueue_many(news)

    group = GroupCommit(enqueue_many, store.enqueue)
    first = group.submit(NewJob("echo", payload="first"))
    while not groups:
        time.sleep(0.001)
    gone = group.submit(NewJob("echo", payload="gone"))
    kept = group.submit_many([NewJob("echo", payload="kept")])
    assert gone.cancel()
    gate.set()
    assert first.result(10).created and kept.result(10)[0].created
    group.close()
    assert groups == [["first"], ["kept"]]
    assert sorted(j.payload for j in store.list_jobs().items) == ["first", "kept"]


def test_close_waits_for_a_callers_own_write_in_flight(store: SqlStore) -> None:
    """A lone caller writes in its own thread; close() must not return before that write has
    committed (JobService.close then lets go of the connections)."""
    entered, release, committed = threading.Event(), threading.Event(), threading.Event()

    def slow_many(news: Any) -> Any:
        entered.set()
        release.wait(10)
        results = store.enqueue_many(news)
        committed.set()
        return results

    group = GroupCommit(slow_many, store.enqueue)
    writer = threading.Thread(target=group.enqueue, args=(NewJob("echo", payload=1),))
    writer.start()
    assert entered.wait(10) and group._thread is None  # written inline, no flusher
    closer = threading.Thread(target=group.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive() and not committed.is_set()  # close() waits for it
    release.set()
    closer.join(10)
    writer.join(10)
    assert committed.is_set() and not closer.is_alive()


def test_another_queues_job_is_not_found_by_the_same_work_as_a_missing_one(
        svc: JobService, store: SqlStore) -> None:
    """Ids are sequential, so a job outside the caller's queues must cost what a missing job
    costs: the same statements, and its attempts never read (else its 404 is slower)."""
    theirs = svc.enqueue("plain", 1, queue="theirs").job
    store.fail(store.claim("w1", ["theirs"], 1, 30)[0].lease, "boom", "tb", 0)  # an attempt
    missing = theirs.id + 1000
    seen: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        work = []
        for job_id in (theirs.id, missing):
            for act in (svc.get, svc.cancel, svc.retry):
                seen.clear()
                with pytest.raises(JobNotFound):
                    act(job_id, allowed_queues={"mine"})
                work.append((act.__name__, list(seen)))
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    assert work[:3] == work[3:]
    assert not any("jobq_attempts" in s for _, statements in work for s in statements)


def test_unique_keys_through_the_python_client(svc: JobService) -> None:
    """``enqueue`` and ``enqueue_many`` take unique_key and unique_for; concurrent threads
    (group commit) with one key get one job."""
    first = svc.enqueue("plain", 1, queue="u", unique_key="nightly", unique_for=30)
    assert first.created and (first.job.unique_key, first.job.unique_for) == ("nightly", 30)
    again = svc.enqueue("plain", 2, queue="u", unique_key="nightly")
    assert (again.created, again.job.id) == (False, first.job.id)
    many = svc.enqueue_many([{"task_type": "plain", "queue": "u", "unique_key": "nightly"},
                             {"task_type": "plain", "queue": "u", "unique_key": "other"}])
    assert [r.created for r in many] == [False, True]
    barrier = threading.Barrier(8)
    out: list[Any] = []

    def go() -> None:
        barrier.wait(timeout=10)
        out.append(svc.enqueue("plain", None, queue="u", unique_key="race"))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(out) == 8 and len({r.job.id for r in out}) == 1
    assert sum(r.created for r in out) == 1
