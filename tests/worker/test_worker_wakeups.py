"""Worker processes: wake-ups (PostgreSQL LISTEN/NOTIFY, SQLite's watch of commits), polling
as the fallback, and the retention loop. Real processes against a real database."""

from __future__ import annotations

import time

import psycopg
import pytest

from jobq.errors import JobNotFound
from jobq.store import SqlStore
from jobq.store.postgres import listen_dsn
from jobq.types import JobState, NewJob
from jobq.harness import wait_for
from procs import Procs, env_for

pytestmark = pytest.mark.slow

#: Long enough that a job picked up within it was woken, not found by a poll.
SLOW_POLL = "30"


def _registered(store: SqlStore, n: int = 1) -> bool:
    return len(store.stats(60).workers) >= n


def _started_within(store: SqlStore, job_id: int, seconds: float) -> bool:
    try:
        wait_for(lambda: store.get(job_id).state is JobState.DONE, seconds, f"job {job_id}")
        return True
    except AssertionError:
        return False


def _pg_only(store: SqlStore) -> str:
    dsn = listen_dsn(store.engine)
    if dsn is None:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's (SQLite workers watch the file's commits)")
    return dsn


def test_an_idle_worker_is_woken_by_a_notification_not_a_poll(
    store: SqlStore, db_url: str, procs: Procs
) -> None:
    """PostgreSQL: LISTEN/NOTIFY. SQLite: the worker's watch of the file's commits."""
    procs.worker(env_for(db_url, JOBQ_POLL_INTERVAL_SECONDS=SLOW_POLL))
    wait_for(lambda: _registered(store), 30, "the worker to register")
    time.sleep(1.0)  # its first poll is behind it, and LISTEN is in place
    for _ in range(3):
        job = store.enqueue(NewJob("echo", "x")).job
        assert _started_within(store, job.id, 5), procs.logs()


def test_without_listen_the_same_worker_waits_for_its_poll(
    store: SqlStore, db_url: str, procs: Procs
) -> None:
    """The negative control of the test above: the wake-up was the notification's doing."""
    procs.worker(env_for(db_url, JOBQ_POLL_INTERVAL_SECONDS=SLOW_POLL,
                         JOBQ_LISTEN_ENABLED="false"))
    wait_for(lambda: _registered(store), 30, "the worker to register")
    time.sleep(1.0)
    job = store.enqueue(NewJob("echo", "x")).job
    assert not _started_within(store, job.id, 3)


def test_a_lost_listen_connection_is_made_again(
    store: SqlStore, db_url: str, procs: Procs
) -> None:
    dsn = _pg_only(store)
    procs.worker(env_for(db_url, JOBQ_POLL_INTERVAL_SECONDS=SLOW_POLL))
    wait_for(lambda: _registered(store), 30, "the worker to register")
    time.sleep(1.0)
    with psycopg.connect(dsn, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'jobq-listen' AND datname = current_database()"
        ).fetchone()[0]
    assert killed == 1
    time.sleep(2.0)  # the listener notices, waits a moment and listens again
    job = store.enqueue(NewJob("echo", "x")).job
    assert _started_within(store, job.id, 5), procs.logs()


def test_polling_finds_jobs_when_notifications_never_come(
    store: SqlStore, db_url: str, procs: Procs
) -> None:
    """SQLite always; PostgreSQL with LISTEN off, as behind a transaction-mode pooler."""
    procs.worker(env_for(db_url, JOBQ_POLL_INTERVAL_SECONDS="0.3", JOBQ_LISTEN_ENABLED="false"))
    wait_for(lambda: _registered(store), 30, "the worker to register")
    ids = [store.enqueue(NewJob("echo", i)).job.id for i in range(20)]
    for job_id in ids:
        assert _started_within(store, job_id, 10), procs.logs()


def test_finished_jobs_are_pruned_after_the_retention_period(
    store: SqlStore, db_url: str, procs: Procs
) -> None:
    kept = store.enqueue(NewJob("echo", "later", delay_seconds=3600)).job
    ids = [store.enqueue(NewJob("echo", i)).job.id for i in range(30)]
    procs.worker(env_for(db_url, JOBQ_RETENTION_SECONDS="1", JOBQ_PRUNE_INTERVAL_SECONDS="0.3"))

    wait_for(lambda: all(_missing(store, i) for i in ids), 30, "the finished jobs to be pruned")
    assert store.get(kept.id).state is JobState.PENDING  # not finished: never pruned


def _missing(store: SqlStore, job_id: int) -> bool:
    try:
        store.get(job_id)
    except JobNotFound:
        return True
    return False
