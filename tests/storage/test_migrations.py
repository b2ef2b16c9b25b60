"""Migrations: idempotent, equal to ``tables.py``, and safe when many processes start at once.

Each test runs on both backends: a fresh SQLite file, or a fresh PostgreSQL database created on
the session server (``pg_url``) and dropped afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timezone
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, delete, insert, inspect, text
from sqlalchemy.exc import IntegrityError

from jobq.harness import PgDatabases
from jobq.schedules import make_schedule
from jobq.settings import load_settings
from jobq.store import SqlStore
from jobq.store import make_engine
from jobq.store.migrate import (
    VERSION_TABLE,
    current_revision,
    downgrade,
    head_revision,
    migrate,
)
from jobq.store.tables import attempts, jobs, metadata
from jobq.types import AttemptOutcome, JobState, NewJob

TABLES = {"jobq_jobs", "jobq_attempts", "jobq_workers", "jobq_api_keys", "jobq_schedules",
          "jobq_queues", "jobq_dependencies"}


@pytest.fixture
def fresh_url(db_url: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A factory of empty databases of the backend under test (no schema at all)."""
    made: list[PgDatabases] = []

    def make() -> str:
        name = f"jobq_mig_{uuid.uuid4().hex[:10]}"
        if db_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path / (name + '.db')}"
        db = PgDatabases(db_url, name=name)
        db.create()
        made.append(db)
        return db.url()

    yield make
    for db in made:
        db.drop()


def _engine(url: str) -> Engine:
    return make_engine(load_settings(database_url=url, auto_migrate=False))


def _version_rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]


def _diffs(engine: Engine) -> list[Any]:
    def for_this_database(obj: Any, name: Any, type_: str, reflected: bool, other: Any) -> bool:
        # An index declared for one database only (``Index.ddl_if``, as the tags' GIN index
        # on PostgreSQL): create_all and the migration leave it out elsewhere.
        only = getattr(getattr(obj, "_ddl_if", None), "dialect", None)
        return only is None or only == engine.dialect.name

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE,
                        "include_object": for_this_database}
        )
        return compare_metadata(ctx, metadata)


def _describe(engine: Engine) -> dict[str, Any]:
    """Everything reflection can see of jobq's tables, in a comparable form.

    Wider than compare_metadata: it also covers check constraints, the partial indexes' WHERE
    clauses and sort orders, foreign-key options and column defaults.
    """
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(TABLES):
        out[table] = {
            "columns": [
                (c["name"], str(c["type"]), getattr(c["type"], "timezone", None), c["nullable"],
                 c.get("default"))
                for c in insp.get_columns(table)
            ],
            "pk": (insp.get_pk_constraint(table)["name"],
                   insp.get_pk_constraint(table)["constrained_columns"]),
            "checks": sorted((c["name"], c["sqltext"]) for c in insp.get_check_constraints(table)),
            "uniques": sorted(
                (c["name"], tuple(c["column_names"])) for c in insp.get_unique_constraints(table)
            ),
            "indexes": sorted(
                (
                    ix["name"],
                    tuple(str(x) for x in (ix.get("expressions") or ix["column_names"])),
                    bool(ix.get("unique")),
                    repr(sorted((k, str(v)) for k, v in (ix.get("dialect_options") or {}).items())),
                    repr(ix.get("column_sorting")),
                )
                for ix in insp.get_indexes(table)
            ),
            "fks": sorted(
                (fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"],
                 tuple(fk["referred_columns"]), repr(sorted(fk["options"].items())))
                for fk in insp.get_foreign_keys(table)
            ),
        }
    return out


def _raw_job(engine: Engine, **given: Any) -> int:
    """Insert a pending job with the columns of every revision since 0005, whatever today's
    table adds (the store's own INSERT names today's columns); return its id."""
    import json

    now = datetime.now(timezone.utc)
    at: Any = now.timestamp() if engine.dialect.name == "sqlite" else now
    row = {"task_type": "echo", "payload": None, "priority": 0, "state": "pending",
           "attempts": 0, "max_attempts": 3, "run_at": at, "created_at": at,
           "queue": "default", "idempotency_key": None, **given}
    row["payload"] = json.dumps(row["payload"])
    with engine.begin() as conn:
        return conn.execute(text(
            f"INSERT INTO jobq_jobs ({', '.join(row)}) VALUES "
            f"({', '.join(':' + k for k in row)}) RETURNING id"), row).scalar_one()


def test_head_is_a_single_known_revision() -> None:
    assert head_revision() == "0014"


def test_migrate_twice_is_a_noop(fresh_url: Callable[[], str]) -> None:
    engine = _engine(fresh_url())
    try:
        assert current_revision(engine) is None
        assert not TABLES & set(inspect(engine).get_table_names())
        migrate(engine)
        assert current_revision(engine) == head_revision()
        schema = _describe(engine)
        store = SqlStore(engine)
        job = store.enqueue(NewJob("echo", {"keep": "me"})).job

        migrate(engine)
        migrate(engine)

        assert current_revision(engine) == head_revision()
        assert _version_rows(engine) == [head_revision()]
        assert _describe(engine) == schema
        kept = store.get(job.id)
        assert kept.payload == {"keep": "me"} and kept.state is JobState.PENDING
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_table_metadata(store: SqlStore) -> None:
    assert TABLES <= set(inspect(store.engine).get_table_names())
    assert _diffs(store.engine) == []


def test_migrated_schema_equals_create_all(fresh_url: Callable[[], str]) -> None:
    migrated, created = _engine(fresh_url()), _engine(fresh_url())
    try:
        migrate(migrated)
        metadata.create_all(created)
        a, b = _describe(migrated), _describe(created)
        for table in sorted(TABLES):
            for part in a[table]:
                assert a[table][part] == b[table][part], (table, part)
    finally:
        migrated.dispose()
        created.dispose()


def test_check_constraints_are_enforced(store: SqlStore) -> None:
    """The schema refuses what the code must never write (a second line of defence)."""
    from sqlalchemy.exc import IntegrityError

    job = store.enqueue(NewJob("echo", None, max_attempts=2)).job
    for bad in ("state = 'bogus'", "attempts = 3", "attempts = -1"):
        with pytest.raises(IntegrityError):
            with store.engine.begin() as conn:
                conn.execute(text(f"UPDATE jobq_jobs SET {bad} WHERE id = :id"), {"id": job.id})
    assert store.get(job.id).state is JobState.PENDING


def test_downgrade_to_base_and_up_again(fresh_url: Callable[[], str]) -> None:
    engine = _engine(fresh_url())
    try:
        migrate(engine)
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert not TABLES & set(inspect(engine).get_table_names())
        migrate(engine)
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_0005_scopes_idempotency_keys_by_queue_and_keeps_every_row(
        fresh_url: Callable[[], str]) -> None:
    """From 0004 with jobs, a failed attempt and a deleted newest job: every row is kept
    (on SQLite the jobs table is rebuilt, with its attempts still referencing it), no id is
    handed out again, and a key is then unique within its queue only."""
    engine = _engine(fresh_url())
    try:
        migrate(engine, "0004")
        now = datetime.now(timezone.utc)
        row = {"task_type": "echo", "payload": {"n": 1}, "priority": 0, "state": "pending",
               "attempts": 0, "max_attempts": 3, "run_at": now, "created_at": now}
        with engine.begin() as conn:
            conn.execute(insert(jobs), [{**row, "queue": "a", "idempotency_key": "k"},
                                        {**row, "queue": "a", "idempotency_key": None},
                                        {**row, "queue": "b", "idempotency_key": "other"}])
            conn.execute(insert(attempts), [{
                "job_id": 1, "attempt": 1, "worker_id": "w", "lease_token": "t" * 32,
                "started_at": now, "finished_at": now, "outcome": "error", "error": "boom"}])
            conn.execute(delete(jobs).where(jobs.c.id == 3))
        migrate(engine)
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
        store = SqlStore(engine)
        kept = store.get(1)
        assert (kept.queue, kept.idempotency_key, kept.payload) == ("a", "k", {"n": 1})
        assert [a.error for a in kept.attempt_log] == ["boom"]
        assert store.get(2).idempotency_key is None
        elsewhere = store.enqueue(NewJob("echo", {"n": 2}, queue="b", idempotency_key="k"))
        assert elsewhere.created and elsewhere.job.id > 3  # 3 was deleted: never handed out again
        same = store.enqueue(NewJob("echo", {"n": 1}, queue="a", idempotency_key="k"))
        assert (same.created, same.job.id) == (False, 1)
        with pytest.raises(IntegrityError):  # while two queues hold "k": nothing changes
            downgrade(engine, "0004")
        assert current_revision(engine) == head_revision()
        assert [a.error for a in store.get(1).attempt_log] == ["boom"]
    finally:
        engine.dispose()


def test_0006_adds_the_schedules_and_keeps_every_job(fresh_url: Callable[[], str]) -> None:
    """From 0005 with a job: the schedules' table comes, the job stays, a schedule can be
    declared and run; back to 0005 the table goes and the jobs stay."""
    engine = _engine(fresh_url())
    try:
        migrate(engine, "0005")
        assert "jobq_schedules" not in inspect(engine).get_table_names()
        store = SqlStore(engine)
        job_id = _raw_job(engine, payload={"keep": "me"}, idempotency_key="k")
        migrate(engine)
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
        assert store.get(job_id).payload == {"keep": "me"}
        spec = make_schedule("echo", 60, name="minutely")
        assert store.declare_schedules([spec]) == {"minutely": "new"}
        assert [s.name for s in store.list_schedules()] == ["minutely"]
        downgrade(engine, "0005")
        assert "jobq_schedules" not in inspect(engine).get_table_names()
        with engine.connect() as conn:  # raw: today's table has columns 0005 lacks
            assert conn.execute(text("SELECT idempotency_key FROM jobq_jobs WHERE id = :id"),
                                {"id": job_id}).scalar() == "k"
    finally:
        engine.dispose()


def test_0007_adds_unique_keys_and_the_queues_table_and_keeps_every_job(fresh_url: Callable[[], str]) -> None:
    """From 0006 with a job and its attempt: the unique-key columns and indexes come (on
    SQLite without a rebuild), old jobs hold no key, a live key is unique in its queue even
    to a raw INSERT; back to 0006 they go and the jobs stay."""
    engine = _engine(fresh_url())
    try:
        migrate(engine, "0006")
        assert "jobq_queues" not in inspect(engine).get_table_names()
        now = datetime.now(timezone.utc)
        row = {"task_type": "echo", "payload": {"n": 1}, "priority": 0, "state": "pending",
               "attempts": 0, "max_attempts": 3, "run_at": now, "created_at": now,
               "queue": "a", "idempotency_key": "k"}
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO jobq_jobs (task_type, payload, priority, state, attempts, "
                "max_attempts, run_at, created_at, queue, idempotency_key) VALUES "
                "(:task_type, :payload, :priority, :state, :attempts, :max_attempts, "
                ":run_at, :created_at, :queue, :idempotency_key)"),
                {**row, "payload": '{"n": 1}',
                 "run_at": now.timestamp() if engine.dialect.name == "sqlite" else now,
                 "created_at": now.timestamp() if engine.dialect.name == "sqlite" else now})
            conn.execute(insert(attempts), [{
                "job_id": 1, "attempt": 1, "worker_id": "w", "lease_token": "t" * 32,
                "started_at": now, "finished_at": now, "outcome": "error", "error": "boom"}])
        migrate(engine)
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
        store = SqlStore(engine)
        kept = store.get(1)
        assert (kept.payload, kept.idempotency_key, kept.unique_key) == ({"n": 1}, "k", None)
        assert [a.error for a in kept.attempt_log] == ["boom"]
        made = store.enqueue(NewJob("echo", 1, queue="a", unique_key="u"))
        assert made.created
        assert not store.enqueue(NewJob("echo", 2, queue="a", unique_key="u")).created
        with pytest.raises(IntegrityError):  # the index itself, under any code
            with engine.begin() as conn:
                conn.execute(insert(jobs), [{**row, "idempotency_key": None, "unique_key": "u"}])
        assert store.pause_queue("a").paused
        assert store.claim("w", ["a"], 10, 30) == []
        downgrade(engine, "0006")
        assert "jobq_queues" not in inspect(engine).get_table_names()
        assert "unique_key" not in {c["name"] for c in inspect(engine).get_columns("jobq_jobs")}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobq_jobs")).scalar() == 2
            assert conn.execute(text("SELECT count(*) FROM jobq_attempts")).scalar() == 1
        migrate(engine)
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_0010_adds_tags_meta_and_progress_and_keeps_every_job(
        fresh_url: Callable[[], str]) -> None:
    """From 0007 with a job: the five columns come (on SQLite without a rebuild) and the old
    job has no tags, meta or progress; a tagged job is found by its tag (on PostgreSQL through
    the GIN index); back to 0007 they go and the jobs stay."""
    engine = _engine(fresh_url())
    try:
        migrate(engine, "0007")
        old = _raw_job(engine, payload={"n": 1}, queue="a")
        migrate(engine)
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
        store = SqlStore(engine)
        kept = store.get(old)
        assert (kept.payload, kept.tags, kept.meta, kept.progress) == ({"n": 1}, (), {}, None)
        tagged = store.enqueue(NewJob("echo", 2, tags=("x", "y"), meta={"by": "ana"})).job
        assert [j.id for j in store.list_jobs(tag="y").items] == [tagged.id]
        assert store.get(tagged.id).meta == {"by": "ana"}
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("jobq_jobs")}
        assert ("ix_jobq_jobs_tags" in indexes) == (engine.dialect.name == "postgresql")
        downgrade(engine, "0007")
        assert "tags" not in {c["name"] for c in inspect(engine).get_columns("jobq_jobs")}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobq_jobs")).scalar() == 2
        migrate(engine)
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_0011_adds_timeouts_and_keeps_every_job_and_attempt(
        fresh_url: Callable[[], str]) -> None:
    """From 0010 with a job and its failed attempt: the column comes, the old job has no
    timeout of its own, its attempt stays (on SQLite the attempts table is rebuilt, its ids
    kept), and a timed-out attempt can be written; back to 0010 it reads as an error."""
    engine = _engine(fresh_url())
    try:
        migrate(engine, "0010")
        old = _raw_job(engine, payload={"n": 1})
        now = datetime.now(timezone.utc)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO jobq_attempts (job_id, attempt, worker_id, lease_token, "
                "started_at, finished_at, outcome, error) VALUES (:j, 1, 'w', :t, :s, :s, "
                "'error', 'boom')"),
                {"j": old, "t": "t" * 32,
                 "s": now.timestamp() if engine.dialect.name == "sqlite" else now})
        migrate(engine)
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
        store = SqlStore(engine)
        kept = store.get(old)
        assert kept.timeout_seconds is None and [a.error for a in kept.attempt_log] == ["boom"]
        job = store.enqueue(NewJob("echo", 2, timeout_seconds=1.5, max_attempts=1)).job
        (claimed,) = [c for c in store.claim("w", ["default"], 5, 30) if c.job.id == job.id]
        assert claimed.job.timeout_seconds == 1.5
        assert store.fail(claimed.lease, "JobTimeout: late", "", 0,
                          outcome=AttemptOutcome.TIMEOUT) is JobState.FAILED
        assert [a.outcome for a in store.get(job.id).attempt_log] == [AttemptOutcome.TIMEOUT]
        with engine.begin() as conn:  # the check still refuses what is no outcome
            with pytest.raises(IntegrityError):
                conn.execute(text("UPDATE jobq_attempts SET outcome = 'nope'"))
        downgrade(engine, "0010")
        with engine.connect() as conn:
            assert sorted(conn.execute(text("SELECT outcome FROM jobq_attempts")).scalars()) \
                == ["error", "error"]
        assert "timeout_seconds" not in {
            c["name"] for c in inspect(engine).get_columns("jobq_jobs")}
        migrate(engine)
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_0012_adds_the_trace_context_and_keeps_every_job(fresh_url: Callable[[], str]) -> None:
    """From 0011 with a job: the column comes (on SQLite without a rebuild) and the old job
    has no trace context; a new job keeps its own; back to 0011 it goes and the jobs stay."""
    engine = _engine(fresh_url())
    try:
        migrate(engine, "0011")
        old = _raw_job(engine, payload={"n": 1}, queue="a")
        migrate(engine)
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
        store = SqlStore(engine)
        assert store.get(old).trace_context is None
        carrier = '{"traceparent":"00-' + "a" * 32 + "-" + "b" * 16 + '-01"}'
        traced = store.enqueue(NewJob("echo", 2, trace_context=carrier)).job
        assert traced.trace_context == carrier
        assert store.get(traced.id).trace_context == carrier
        downgrade(engine, "0011")
        assert "trace_context" not in {
            c["name"] for c in inspect(engine).get_columns("jobq_jobs")}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobq_jobs")).scalar() == 2
        migrate(engine)
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_0013_adds_workflows_and_keeps_every_job_and_attempt(
        fresh_url: Callable[[], str]) -> None:
    """From 0012 with a job and its attempt: the columns and the dependencies come (on
    SQLite the jobs table is rebuilt, its attempts still referencing it, no id handed out
    again), the old job has no parents; a graph can be made and run; back to 0012 only once
    no job waits."""
    engine = _engine(fresh_url())
    try:
        migrate(engine, "0012")
        old = _raw_job(engine, payload={"n": 1})
        gone = _raw_job(engine, payload={"n": 2})
        now = datetime.now(timezone.utc)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO jobq_attempts (job_id, attempt, worker_id, lease_token, "
                "started_at, finished_at, outcome, error) VALUES (:j, 1, 'w', :t, :s, :s, "
                "'error', 'boom')"),
                {"j": old, "t": "t" * 32,
                 "s": now.timestamp() if engine.dialect.name == "sqlite" else now})
            conn.execute(text("DELETE FROM jobq_jobs WHERE id = :i"), {"i": gone})
        migrate(engine)
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
        store = SqlStore(engine)
        kept = store.get(old)
        assert (kept.parents_left, kept.on_final, kept.callback_url) == (None, None, None)
        assert [a.error for a in kept.attempt_log] == ["boom"]
        child = store.enqueue(NewJob("echo", depends_on=(old,))).job
        assert child.id > gone and child.state is JobState.WAITING
        assert store.relatives(child.id) == ([old], [])
        with pytest.raises(RuntimeError, match="wait for their parents"):
            downgrade(engine, "0012")
        store.cancel(child.id)
        downgrade(engine, "0012")
        assert "jobq_dependencies" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobq_jobs")).scalar() == 2
        migrate(engine)
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_0014_keeps_idempotency_keys_unique_per_queue_with_an_index_of_keyed_jobs_only(
        fresh_url: Callable[[], str]) -> None:
    """From 0013 with a keyed and an unkeyed job: both kept (on SQLite the table is rebuilt),
    the key still returns its job, a second row with it is refused by the index itself, the
    index holds the keyed job only; down to 0013 and the constraint is back."""
    engine = _engine(fresh_url())
    try:
        migrate(engine, "0013")
        keyed = _raw_job(engine, idempotency_key="k")
        plain = _raw_job(engine)
        migrate(engine)
        assert _diffs(engine) == []
        store = SqlStore(engine)
        again = store.enqueue(NewJob("echo", idempotency_key="k"))
        assert (again.job.id, again.created) == (keyed, False)
        assert store.enqueue(NewJob("echo", queue="other", idempotency_key="k")).created
        assert store.get(plain).idempotency_key is None
        with pytest.raises(IntegrityError):  # the index itself, under any code
            _raw_job(engine, idempotency_key="k")
        with engine.connect() as conn:
            indexes = inspect(engine).get_indexes("jobq_jobs")
            (ix,) = [i for i in indexes if i["name"] == "uq_jobq_jobs_queue_idempotency_key"]
            where = " ".join(str(v) for v in ix["dialect_options"].values())
            assert ix["unique"] and "idempotency_key IS NOT NULL" in where
            assert conn.execute(text("SELECT count(*) FROM jobq_jobs")).scalar() == 3
        downgrade(engine, "0013")
        uniques = inspect(engine).get_unique_constraints("jobq_jobs")
        assert [u["column_names"] for u in uniques] == [["queue", "idempotency_key"]]
        with pytest.raises(IntegrityError):
            _raw_job(engine, idempotency_key="k")
        migrate(engine)
        assert _diffs(engine) == []
    finally:
        engine.dispose()


_MIGRATE_AT_ONCE = """
import os, sys, time
from jobq.harness import PgDatabases
from jobq.settings import load_settings
from jobq.store import make_engine
from jobq.store.migrate import current_revision, migrate

url, go = sys.argv[1], sys.argv[2]
engine = make_engine(load_settings(database_url=url, auto_migrate=False))
print("ready", flush=True)
while not os.path.exists(go):  # start together, once every process has imported
    time.sleep(0.002)
migrate(engine)
print(current_revision(engine), flush=True)
engine.dispose()
"""


def test_eight_processes_migrate_at_once(fresh_url: Callable[[], str], tmp_path: Path) -> None:
    url = fresh_url()
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_AT_ONCE, url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        go.touch()
        outcomes = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outcomes):
        assert p.returncode == 0, err
        assert out.strip() == head_revision(), (out, err)

    engine = _engine(url)
    try:
        assert current_revision(engine) == head_revision()
        assert _version_rows(engine) == [head_revision()]
        assert _diffs(engine) == []
        store = SqlStore(engine)
        assert store.enqueue(NewJob("echo", 1)).created
        assert store.stats(60).jobs["pending"] == 1
    finally:
        engine.dispose()

