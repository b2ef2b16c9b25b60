"""Paused queues (migration 0007), on both backends: the claim leaves a paused queue's jobs
alone, running ones finish, resume lets them be claimed again (and, on PostgreSQL, wakes the
queue's workers); the list of queues counts jobs by state and shows the flag."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from factories import claim_one, new_job

from jobq.store import SqlStore
from jobq.store.postgres import NOTIFY_CHANNEL
from jobq.types import JobState


def test_a_paused_queue_is_not_claimed_until_it_is_resumed(store: SqlStore) -> None:
    a = store.enqueue(new_job(queue="a")).job
    b = store.enqueue(new_job(queue="b")).job
    info = store.pause_queue("a")
    assert info.paused and info.paused_at is not None and info.jobs["pending"] == 1
    got = store.claim("w", ["a", "b"], 10, 30)
    assert [c.job.id for c in got] == [b.id]
    assert store.claim("w", ["a"], 10, 30) == []
    assert store.get(a.id).state is JobState.PENDING
    again = store.pause_queue("a")  # pausing twice keeps the first time
    assert again.paused_at == info.paused_at
    resumed = store.resume_queue("a")
    assert (resumed.paused, resumed.paused_at) == (False, None)
    assert [c.job.id for c in store.claim("w", ["a"], 10, 30)] == [a.id]


def test_running_jobs_of_a_paused_queue_finish(store: SqlStore) -> None:
    store.enqueue(new_job(queue="default"))
    store.enqueue(new_job(queue="default"))
    c = claim_one(store)
    store.pause_queue("default")
    assert store.complete(c.lease, "ok")
    assert store.get(c.job.id).state is JobState.DONE
    assert store.claim("w1", ["default"], 10, 30) == []


def test_a_queue_can_be_paused_before_its_first_job(store: SqlStore) -> None:
    store.pause_queue("later")
    job = store.enqueue(new_job(queue="later")).job
    assert store.claim("w", ["later"], 10, 30) == []
    store.resume_queue("later")
    assert [c.job.id for c in store.claim("w", ["later"], 10, 30)] == [job.id]


def test_list_queues_has_every_queue_with_its_counts_and_flag(store: SqlStore) -> None:
    store.enqueue(new_job(queue="a"))
    store.enqueue(new_job(queue="a"))
    store.enqueue(new_job(queue="b"))
    claim_one(store, queues=("b",))
    store.pause_queue("empty")
    store.pause_queue("b")
    listed = {q.name: q for q in store.list_queues()}
    assert sorted(listed) == ["a", "b", "empty"]
    assert listed["a"].jobs == {"pending": 2, "running": 0, "done": 0, "failed": 0,
                                "cancelled": 0, "waiting": 0}
    assert (listed["b"].paused, listed["b"].jobs["running"]) == (True, 1)
    assert listed["empty"].paused and sum(listed["empty"].jobs.values()) == 0
    assert not listed["a"].paused and listed["a"].paused_at is None
    only = store.list_queues(only=["a", "nothing"])
    assert [q.name for q in only] == ["a", "nothing"]
    assert sum(only[1].jobs.values()) == 0 and not only[1].paused


def _listener(store: SqlStore) -> Any:
    if store.dialect.name != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's (SQLite workers watch the file's commits)")
    dsn = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    return conn


def test_resume_wakes_the_queues_workers(store: SqlStore) -> None:
    with _listener(store) as conn:
        store.pause_queue("q")
        assert [n.payload for n in conn.notifies(timeout=0.3)] == []
        store.resume_queue("q")
        assert [n.payload for n in conn.notifies(timeout=0.5)] == ["q"]
