"""JobService.wait: ends as soon as the job is final (done, failed, cancelled) or at its
timeout; woken by a notification (PostgreSQL LISTEN on jobq_final, one connection per
process) or by the file's commits (SQLite), never by a tight poll; bounded; on both backends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from jobq.errors import JobNotFound, RateLimited
from jobq.registry import load_registry
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.types import JobState, NewJob


def _service(store: SqlStore, settings: Settings, **overrides: Any) -> JobService:
    s = load_settings(**{**settings.model_dump(), **overrides}) if overrides else settings
    return JobService(store, load_registry(s.tasks), s)


@pytest.fixture
def waiting(store: SqlStore, settings: Settings) -> Iterator[Callable[..., JobService]]:
    made: list[JobService] = []

    def make(**overrides: Any) -> JobService:
        made.append(_service(store, settings, **overrides))
        return made[-1]

    yield make
    for svc in made:
        svc._waits.close()  # the store is the fixture's to dispose


def _reads(svc: JobService) -> list[int]:
    """Count the service's reads of jobs (the database reads a wait makes)."""
    calls: list[int] = []
    real = svc.store.get

    def counted(job_id: int, **kw: Any) -> Any:
        calls.append(job_id)
        return real(job_id, **kw)

    svc.store.get = counted  # type: ignore[method-assign]
    return calls


def _later(seconds: float, fn: Callable[[], Any]) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(seconds), fn()), daemon=True)
    t.start()
    return t


def test_a_wait_ends_when_the_job_is_done_woken_not_polling(
        store: SqlStore, waiting: Callable[..., JobService]) -> None:
    svc = waiting(wait_recheck_seconds=30)  # only a wake-up can end this wait early
    job = store.enqueue(NewJob("echo", {"n": 1})).job
    (claimed,) = store.claim("w", ["default"], 1, 30)
    reads = _reads(svc)
    t = _later(0.3, lambda: store.complete(claimed.lease, {"ok": True}))
    began = time.monotonic()
    got = svc.wait(job.id, timeout=20)
    took = time.monotonic() - began
    t.join()
    assert got.state is JobState.DONE and got.result == {"ok": True}
    assert 0.25 < took < 3
    assert len(reads) <= 4, reads  # first look, the wake-up(s): no tight poll


@pytest.mark.parametrize("how", ["failed", "cancelled", "cancelled by handler", "rescued"])
def test_a_wait_ends_when_the_job_fails_or_is_cancelled(
        store: SqlStore, waiting: Callable[..., JobService], how: str) -> None:
    svc = waiting(wait_recheck_seconds=30)
    job = store.enqueue(NewJob("echo", None, max_attempts=1)).job
    lease_seconds = 0.5 if how == "rescued" else 30
    (claimed,) = store.claim("w", ["default"], 1, lease_seconds)
    finish = {
        "failed": lambda: store.fail(claimed.lease, "E: boom", "", 0.0),
        "cancelled": lambda: store.cancel(job.id),
        "cancelled by handler": lambda: store.cancel_running(claimed.lease, "no"),
        "rescued": lambda: (time.sleep(0.6), store.rescue()),
    }[how]
    t = _later(0.3, finish)
    began = time.monotonic()
    got = svc.wait(job.id, timeout=20)
    t.join()
    assert got.state in (JobState.FAILED, JobState.CANCELLED)
    assert time.monotonic() - began < 4


def test_a_wait_answers_at_its_timeout_with_the_job_as_it_is(
        store: SqlStore, waiting: Callable[..., JobService]) -> None:
    svc = waiting()
    job = store.enqueue(NewJob("echo", None, delay_seconds=3600)).job
    reads = _reads(svc)
    began = time.monotonic()
    got = svc.wait(job.id, timeout=0.6)
    assert 0.55 < time.monotonic() - began < 2.5
    assert got.state is JobState.PENDING and len(reads) <= 3
    assert svc.wait(job.id, timeout=0).state is JobState.PENDING  # one look


def test_a_wait_for_a_final_or_missing_job_answers_at_once(
        store: SqlStore, waiting: Callable[..., JobService]) -> None:
    svc = waiting()
    job = store.enqueue(NewJob("echo")).job
    store.cancel(job.id)
    began = time.monotonic()
    assert svc.wait(job.id, timeout=30).state is JobState.CANCELLED
    with pytest.raises(JobNotFound):
        svc.wait(job.id + 1000, timeout=30)
    with pytest.raises(JobNotFound):  # outside the caller's queues: not found either
        svc.wait(job.id, timeout=30, allowed_queues=["other"])
    assert time.monotonic() - began < 1.5
    assert svc._waits.waiting == 0


@pytest.mark.parametrize("bad", [-1, 60.5, float("nan"), float("inf"), True, "5"])
def test_a_timeout_outside_0_to_60_is_refused(
        waiting: Callable[..., JobService], bad: Any) -> None:
    with pytest.raises(ValueError, match="timeout"):
        waiting().wait(1, timeout=bad)


def test_waits_are_bounded_and_a_finished_wait_frees_its_place(
        store: SqlStore, waiting: Callable[..., JobService]) -> None:
    svc = waiting(max_waiters=1)
    job = store.enqueue(NewJob("echo")).job
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(svc.wait(job.id, timeout=20)))
    t.start()
    deadline = time.monotonic() + 5
    while svc._waits.waiting < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(RateLimited):
        svc.wait(job.id, timeout=1)
    store.cancel(job.id)
    t.join(10)
    assert got and got[0].state is JobState.CANCELLED
    assert svc._waits.waiting == 0
    assert svc.wait(job.id, timeout=1).state is JobState.CANCELLED


@pytest.mark.postgres
def test_postgres_many_waiters_share_one_listener_and_hold_no_connection(
        pg_url: str, waiting: Callable[..., JobService], store: SqlStore) -> None:
    if store.dialect.name != "postgresql":
        pytest.skip("LISTEN is PostgreSQL's")
    svc = waiting(wait_recheck_seconds=30)
    jobs = [store.enqueue(NewJob("echo", i)).job for i in range(20)]
    claimed = store.claim("w", ["default"], 20, 30)
    out: list[Any] = []
    threads = [threading.Thread(target=lambda j=j: out.append(svc.wait(j.id, timeout=20)))
               for j in jobs]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while svc._waits.waiting < 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    assert store.engine.pool.checkedout() == 0  # idle waiters hold no pooled connection
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as c:
        listeners = c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                              "= 'jobq-waits' AND datname = current_database()").fetchone()
    assert listeners == (1,)
    began = time.monotonic()
    assert len(store.complete_many([(c.lease, c.job.payload) for c in claimed])) == 20
    for t in threads:
        t.join(10)
    assert time.monotonic() - began < 3
    assert sorted(j.result for j in out) == list(range(20))


@pytest.mark.postgres
def test_postgres_a_done_batch_notifies_its_ids_once_and_a_lost_one_not_at_all(
        pg_url: str, store: SqlStore) -> None:
    if store.dialect.name != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's")
    jobs = [store.enqueue(NewJob("echo", i)).job for i in range(3)]
    claimed = store.claim("w", ["default"], 3, 30)
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as listener:
        listener.execute("LISTEN jobq_final")
        store.cancel(jobs[0].id)  # its lease is gone: its success is refused
        assert len(store.complete_many([(c.lease, None) for c in claimed])) == 2
        notes = [n.payload for n in listener.notifies(timeout=1.0)]
        assert notes[0] == str(jobs[0].id)  # the cancel
        assert sorted(notes[1].split(",")) == sorted(str(j.id) for j in jobs[1:])
        assert store.complete_many([(c.lease, None) for c in claimed]) == set()
        assert list(listener.notifies(timeout=0.5)) == []  # nothing took: no notification
