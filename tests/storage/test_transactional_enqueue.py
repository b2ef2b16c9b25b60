"""Transactional enqueue: a job written in the application's own transaction exists if and
only if that transaction commits. On both backends, with each kind of connection an
application may hold (a SQLAlchemy Connection, a SQLAlchemy Session, the raw driver
connection), real rollbacks and commits, a real worker process, and an application process
killed before its commit.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from jobq.errors import ConfigError, IdempotencyConflict, JobNotFound
from jobq.harness import wait_until
from jobq.service import JobService
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.types import JobState
from procs import REPO, Procs, env_for

KINDS = ["connection", "session", "raw"]


def raw_url(settings: Settings) -> str:
    return settings.database_url.replace("postgresql+psycopg://", "postgresql://")


def sqlite_path(settings: Settings) -> str:
    return settings.database_url.removeprefix("sqlite:///")


class App:
    """The application's side: its own connection, its own ``orders`` table, its own
    transaction, ended by ``commit`` or ``rollback``."""

    def __init__(self, settings: Settings, kind: str) -> None:
        self.kind = kind
        self.engine = None
        if kind == "raw":
            self.raw: Any = (sqlite3.connect(sqlite_path(settings)) if settings.is_sqlite
                             else psycopg.connect(raw_url(settings)))
            self.handle: Any = self.raw
        else:
            self.engine = create_engine(settings.database_url)
            self.handle = (self.engine.connect() if kind == "connection"
                           else Session(self.engine))
        self.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, what TEXT)")
        self.commit()

    def execute(self, sql: str, **params: Any) -> Any:
        if self.kind == "raw":
            if isinstance(self.raw, sqlite3.Connection):
                return self.raw.execute(sql.replace("%(", ":").replace(")s", ""), params)
            return self.raw.execute(sql, params)
        stmt = text(sql.replace("%(", ":").replace(")s", ""))
        return self.handle.execute(stmt, params)

    def commit(self) -> None:
        self.handle.commit()

    def rollback(self) -> None:
        self.handle.rollback()

    def close(self) -> None:
        self.handle.close()
        if self.engine is not None:
            self.engine.dispose()


@pytest.fixture(params=KINDS)
def app(request: pytest.FixtureRequest, settings: Settings, store: SqlStore) -> Iterator[App]:
    a = App(settings, request.param)
    a.execute("DELETE FROM orders")
    a.commit()
    yield a
    a.rollback()
    a.close()


def orders(store: SqlStore) -> list[str]:
    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT what FROM orders ORDER BY id"))]


def exists(store: SqlStore, job_id: int) -> bool:
    try:
        store.get(job_id)
        return True
    except JobNotFound:
        return False


def test_rolled_back_means_no_job_ever_committed_means_the_job(
    app: App, service: JobService, store: SqlStore
) -> None:
    app.execute("INSERT INTO orders (id, what) VALUES (1, 'lost order')")
    lost = service.enqueue("echo", {"order": 1}, connection=app.handle).job
    many = service.enqueue_many([{"task_type": "echo", "payload": i} for i in range(3)],
                                connection=app.handle)
    # Not committed: no other connection sees the job, and no claim can take it.
    assert not exists(store, lost.id)
    assert store.claim("w-1", ["default"], 10, 30) == []
    app.rollback()
    assert not exists(store, lost.id)
    assert not any(exists(store, r.job.id) for r in many)
    assert store.claim("w-1", ["default"], 10, 30) == []

    app.execute("INSERT INTO orders (id, what) VALUES (2, 'kept order')")
    kept = service.enqueue("echo", {"order": 2}, connection=app.handle).job
    app.commit()
    assert orders(store) == ["kept order"]
    assert store.get(kept.id).state is JobState.PENDING
    (claimed,) = store.claim("w-1", ["default"], 10, 30)
    assert claimed.job.id == kept.id and claimed.job.payload == {"order": 2}


def test_keys_behave_as_in_jobqs_own_transaction(
    app: App, service: JobService, store: SqlStore
) -> None:
    first = service.enqueue("echo", 1, idempotency_key="k", connection=app.handle)
    again = service.enqueue("echo", 1, idempotency_key="k", connection=app.handle)
    assert first.created and not again.created and again.job.id == first.job.id
    u1 = service.enqueue("echo", "a", unique_key="acct-7", connection=app.handle)
    u2 = service.enqueue("echo", "b", unique_key="acct-7", connection=app.handle)
    assert u1.created and not u2.created and u2.job.id == u1.job.id

    # A conflict inside the transaction takes back what that call wrote, nothing else.
    app.execute("INSERT INTO orders (id, what) VALUES (3, 'still mine')")
    with pytest.raises(IdempotencyConflict) as info:
        service.enqueue_many([{"task_type": "echo", "payload": "fresh"},
                              {"task_type": "echo", "payload": 2, "idempotency_key": "k"}],
                             connection=app.handle)
    assert info.value.index == 1 and info.value.job_id == first.job.id
    with pytest.raises(IdempotencyConflict):
        service.enqueue_many([{"task_type": "echo", "payload": "fresh", "unique_key": "u9"},
                              {"task_type": "echo", "payload": 3, "idempotency_key": "k"}],
                             connection=app.handle)
    app.commit()
    assert orders(store) == ["still mine"]
    payloads = sorted(str(j.payload) for j in store.list_jobs(limit=50).items)
    assert payloads == ["1", "a"]
    # Committed: jobq's own enqueue finds the keys held.
    assert service.enqueue("echo", 1, idempotency_key="k").job.id == first.job.id
    assert service.enqueue("echo", "c", unique_key="acct-7").job.id == u1.job.id


def test_the_wrong_connection_is_a_clear_error(settings: Settings, service: JobService,
                                               store: SqlStore, tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="takes a SQLAlchemy Connection"):
        service.enqueue("echo", connection=object())
    other = (psycopg.connect("postgresql://postgres@127.0.0.1:5432/test") if settings.is_sqlite
             else sqlite3.connect(tmp_path / "other.db"))
    try:
        with pytest.raises(ConfigError, match="jobq's database is"):
            service.enqueue("echo", connection=other)
    finally:
        other.close()
    if settings.is_sqlite:
        auto = sqlite3.connect(sqlite_path(settings), isolation_level=None)
    else:
        auto = psycopg.connect(raw_url(settings), autocommit=True)
    try:
        with pytest.raises(ConfigError, match="autocommit"):
            service.enqueue("echo", connection=auto)
    finally:
        auto.close()
    assert store.list_jobs(limit=10).items == []


def test_a_psycopg_transaction_block_in_autocommit_mode_is_a_transaction(
    settings: Settings, service: JobService, store: SqlStore
) -> None:
    if settings.is_sqlite:
        pytest.skip("psycopg's transaction blocks are PostgreSQL's")
    with psycopg.connect(raw_url(settings), autocommit=True) as raw:
        with pytest.raises(RuntimeError, match="changed my mind"):
            with raw.transaction():
                gone = service.enqueue("echo", "x", connection=raw).job
                raise RuntimeError("changed my mind")
        with raw.transaction():
            kept = service.enqueue("echo", "y", connection=raw).job
    assert not exists(store, gone.id) and exists(store, kept.id)


# -- real processes ---------------------------------------------------------------------------


def test_a_worker_runs_the_job_at_the_commit_and_never_before(
    settings: Settings, service: JobService, store: SqlStore, procs: Procs
) -> None:
    # A long poll interval: the job can only run this fast if the commit wakes the worker
    # (NOTIFY on PostgreSQL, the data_version watch on SQLite).
    procs.worker(env_for(settings.database_url, JOBQ_POLL_INTERVAL_SECONDS="30"))
    assert wait_until(lambda: service.stats().workers, 30), "the worker did not start"
    time.sleep(1)  # past its first poll: from here only a wake-up finds a job
    app = App(settings, "raw")
    try:
        job = service.enqueue("echo", {"n": 1}, connection=app.handle).job
        time.sleep(1.5)
        assert not exists(store, job.id)  # nobody saw it
        app.commit()
        committed = time.monotonic()
        assert wait_until(lambda: store.get(job.id).state is JobState.DONE, 15)
        assert time.monotonic() - committed < 10  # not the 30 s poll
    finally:
        app.close()


_CRASHING_APP = textwrap.dedent("""
    import sys, time
    import jobq
    from sqlalchemy import create_engine, text

    q = jobq.connect(sys.argv[1])
    engine = create_engine(sys.argv[1])
    conn = engine.connect()
    conn.execute(text("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, what TEXT)"))
    conn.commit()
    conn.execute(text("INSERT INTO orders (id, what) VALUES (42, 'never committed')"))
    job = q.enqueue("echo", {"order": 42}, connection=conn).job
    print("enqueued", job.id, flush=True)
    time.sleep(120)  # killed here, before any commit
""")


def test_an_application_killed_before_its_commit_leaves_nothing(
    settings: Settings, store: SqlStore, tmp_path: Any
) -> None:
    script = tmp_path / "app.py"
    script.write_text(_CRASHING_APP)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), settings.database_url],
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("enqueued "), line
        job_id = int(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    def nothing_left() -> bool:
        # PostgreSQL ends the dead client's transaction once it sees the socket closed; its
        # row locks go with it, so a claim now would take the job if it existed.
        return not exists(store, job_id) and store.claim("w-1", ["default"], 10, 30) == []

    assert wait_until(nothing_left, 30)
    assert "never committed" not in orders(store)
