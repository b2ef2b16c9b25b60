"""Table definitions, shared by both backends, by the store and by the Alembic migrations."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.types import TypeDecorator, TypeEngine

from jobq.types import (
    MAX_URL_CHARS,
    PROGRESS_MESSAGE_CHARS,
    TRACE_CONTEXT_CHARS,
    AttemptOutcome,
    JobState,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Timestamp(TypeDecorator[datetime]):
    """An aware UTC datetime.

    PostgreSQL: ``timestamptz``. SQLite has no time type and its text timestamps compare badly
    with what its clock functions return, so there it is a REAL of Unix seconds, which the
    SQLite expressions in ``exprs.py`` produce and compare directly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Float())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        if dialect.name == "sqlite":
            return value.timestamp()
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, tz=timezone.utc)
        tz = value.tzinfo
        if tz is timezone.utc:
            return value
        if tz is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        # One plain function per value rather than TypeDecorator's layers: every claimed,
        # enqueued or listed job reads several timestamps, and this was an eighth of a
        # 1,000-job enqueue's time. jobq's PostgreSQL sessions run in UTC (engine.py), so
        # psycopg's values mostly pass through untouched.
        utc, from_ts = timezone.utc, datetime.fromtimestamp
        if dialect.name == "sqlite":
            def process_sqlite(value: Any) -> datetime | None:
                return None if value is None else from_ts(value, tz=utc)
            return process_sqlite

        def process(value: Any) -> datetime | None:
            if value is None or value.tzinfo is utc:
                return value
            return self.process_result_value(value, dialect)
        return process


class _SqliteJson(sqlite.JSON):
    """SQLite JSON kept in a TEXT column.

    A column declared ``JSON`` has NUMERIC affinity in SQLite, which turns the text of a
    top-level number into an INTEGER or REAL: ``3.0`` came back as ``3``, integers beyond 64
    bits were rounded, and an identical idempotent repeat then looked like a conflict.
    TEXT affinity stores the JSON text exactly as written.
    """

    cache_ok = True


@compiles(_SqliteJson, "sqlite")
def _sqlite_json_ddl(type_: _SqliteJson, compiler: Any, **kw: Any) -> str:
    return "TEXT"


JsonValue = (
    JSON(none_as_null=False)
    .with_variant(JSONB(none_as_null=False), "postgresql")
    .with_variant(_SqliteJson(none_as_null=False), "sqlite")
)
#: The same, with Python's None stored as SQL NULL: a job without tags or meta has NULL there,
#: so the tags' GIN index (PostgreSQL, partial) holds tagged jobs only.
JsonOrNull = (
    JSON(none_as_null=True)
    .with_variant(JSONB(none_as_null=True), "postgresql")
    .with_variant(_SqliteJson(none_as_null=True), "sqlite")
)
# SQLite needs INTEGER PRIMARY KEY (a rowid alias) for AUTOINCREMENT, which stops ids from
# ever being reused after deletes.
BigId = BigInteger().with_variant(Integer(), "sqlite")

_states = ", ".join(f"'{s.value}'" for s in JobState)
_outcomes = ", ".join(f"'{o.value}'" for o in AttemptOutcome)

jobs = Table(
    "jobq_jobs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("task_type", String(128), nullable=False),
    Column("payload", JsonValue, nullable=True),
    Column("queue", String(128), nullable=False, server_default="default"),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("state", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("run_at", Timestamp, nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    # The lease: set while running, cleared on every move out of running.
    Column("worker_id", String(128), nullable=True),
    Column("lease_token", String(64), nullable=True),
    Column("lease_expires_at", Timestamp, nullable=True),
    Column("result", JsonValue, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("started_at", Timestamp, nullable=True),
    Column("finished_at", Timestamp, nullable=True),
    # Unique jobs (migration 0007): see the two indexes below and ``store/enqueue.py``.
    Column("unique_key", String(255), nullable=True),
    Column("unique_for", Float, nullable=True),
    # A serial lane (migration 0009): at most ``concurrency_limit`` jobs with this key run at
    # once, across the cluster (``store/limits.py``).
    Column("concurrency_key", String(255), nullable=True),
    Column("concurrency_limit", Integer, nullable=True),
    # Tags (a JSON array of names) and meta (a JSON object), NULL when none were given; the
    # lease holder's last progress report (migration 0010).
    Column("tags", JsonOrNull, nullable=True),
    Column("meta", JsonOrNull, nullable=True),
    Column("progress", Float, nullable=True),
    Column("progress_message", String(PROGRESS_MESSAGE_CHARS), nullable=True),
    Column("progress_at", Timestamp, nullable=True),
    # Its own timeout of an attempt, NULL: its task's or the worker's (migration 0011).
    Column("timeout_seconds", Float, nullable=True),
    # The enqueuer's trace context, W3C traceparent/tracestate as JSON (migration 0012,
    # ``jobq.tracing``); NULL when it had none.
    Column("trace_context", String(TRACE_CONTEXT_CHARS), nullable=True),
    # Workflows (migration 0013, ``store/workflows.py``): parents not done yet (NULL: none);
    # TRUE when its end must be acted on in the same transaction (dependents, a callback),
    # which keeps such jobs off the one-statement batch completion; the rest of the policy.
    Column("parents_left", Integer, nullable=True),
    Column("on_final", Boolean, nullable=True),
    Column("on_parent_failure", String(8), nullable=True),
    Column("cancelled_by", BigId, nullable=True),
    Column("callback_url", String(MAX_URL_CHARS), nullable=True),
    CheckConstraint(f"state IN ({_states})", name="state"),
    CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="attempts"),
    sqlite_autoincrement=True,
)

# An idempotency key is unique within its queue (migration 0005): a producer of one queue can
# neither take another queue's key nor learn that it exists. A partial index: unkeyed jobs,
# most of them, are not in it, so their claim and completion do not write to it (0014).
# ``KEYED`` is the predicate an ON CONFLICT names to use it.
KEYED = text("idempotency_key IS NOT NULL")
Index(
    "uq_jobq_jobs_queue_idempotency_key",
    jobs.c.queue,
    jobs.c.idempotency_key,
    unique=True,
    postgresql_where=KEYED,
    sqlite_where=KEYED,
)

# The claim reads only pending rows; a partial index keeps it cheap with millions of
# finished jobs in the table.
Index(
    "ix_jobq_jobs_claim",
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.run_at,
    jobs.c.id,
    postgresql_where=text("state = 'pending'"),
    sqlite_where=text("state = 'pending'"),
)
# Rescue looks for running rows whose lease has expired.
Index(
    "ix_jobq_jobs_lease",
    jobs.c.lease_expires_at,
    postgresql_where=text("state = 'running'"),
    sqlite_where=text("state = 'running'"),
)
Index("ix_jobq_jobs_state_id", jobs.c.state, jobs.c.id)
# Pruning and the stats read finished jobs by finish time; unfinished ones stay out of the
# index, so inserts and claims do not write to it (migration 0003).
Index(
    "ix_jobq_jobs_finished_at",
    jobs.c.finished_at,
    postgresql_where=text("finished_at IS NOT NULL"),
    sqlite_where=text("finished_at IS NOT NULL"),
)

# A unique key is held by at most one live (pending or running) job of its queue: the index
# that makes concurrent enqueues of one key create one job. Jobs without a key are not in it.
_LIVE_UNIQUE = "unique_key IS NOT NULL AND state IN ('pending', 'running')"
Index(
    "ix_jobq_jobs_unique_live",
    jobs.c.queue,
    jobs.c.unique_key,
    unique=True,
    postgresql_where=text(_LIVE_UNIQUE),
    sqlite_where=text(_LIVE_UNIQUE),
)
# Every job with a unique key, finished ones too: the lookup of the key's holder, and of a
# finished job whose ``unique_for`` window is still open.
Index(
    "ix_jobq_jobs_unique_key",
    jobs.c.queue,
    jobs.c.unique_key,
    postgresql_where=text("unique_key IS NOT NULL"),
    sqlite_where=text("unique_key IS NOT NULL"),
)

# What a limited claim counts (migration 0009): running jobs by key, and whether keyed jobs
# wait in a queue. Unkeyed jobs enter neither, so the ordinary claim writes no more index
# entries than before; running jobs per queue are few and found through (state, id).
_RUNNING_KEYED = "state = 'running' AND concurrency_key IS NOT NULL"
Index("ix_jobq_jobs_running_key", jobs.c.concurrency_key,
      postgresql_where=text(_RUNNING_KEYED), sqlite_where=text(_RUNNING_KEYED))
_PENDING_KEYED = "state = 'pending' AND concurrency_key IS NOT NULL"
Index("ix_jobq_jobs_pending_keyed", jobs.c.queue,
      postgresql_where=text(_PENDING_KEYED), sqlite_where=text(_PENDING_KEYED))
# ``GET /jobs?tag=``: on PostgreSQL a GIN index (jsonb_path_ops, which serves ``@>``) over the
# tagged jobs only. SQLite has no index that a JSON array's elements can use: there the filter
# is a json_each() per row, read newest first until the page is full (store/queries.py).
Index(
    "ix_jobq_jobs_tags",
    jobs.c.tags,
    postgresql_using="gin",
    postgresql_ops={"tags": "jsonb_path_ops"},
    postgresql_where=text("tags IS NOT NULL"),
).ddl_if(dialect="postgresql")

# Who waits for whom (migration 0013): a child's parents, and (by the parent's index) the
# dependents a parent's end acts on. Deleting a job (pruning) deletes its edges.
dependencies = Table(
    "jobq_dependencies",
    metadata,
    Column("child_id", BigId, ForeignKey("jobq_jobs.id", ondelete="CASCADE"),
           primary_key=True),
    Column("parent_id", BigId, ForeignKey("jobq_jobs.id", ondelete="CASCADE"),
           primary_key=True, index=True),
)

attempts = Table(
    "jobq_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "job_id",
        BigId,
        ForeignKey("jobq_jobs.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", String(128), nullable=False),
    Column("lease_token", String(64), nullable=False, unique=True),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp, nullable=True),
    Column("outcome", String(16), nullable=False, server_default="running"),
    Column("error", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    CheckConstraint(f"outcome IN ({_outcomes})", name="outcome"),
    sqlite_autoincrement=True,
    # Written once, when the attempt ends, and never updated (``store/attempt_log.py``;
    # migration 0004): the outcome's default is what rows of earlier versions held.
)

workers = Table(
    "jobq_workers",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", JsonValue, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("last_heartbeat_at", Timestamp, nullable=False),
)

# API keys. Only a SHA-256 of each key's secret is kept (see jobq/keys.py for why a fast hash
# is enough); ``prefix`` is the public half of the token, by which a request's key is found.
api_keys = Table(
    "jobq_api_keys",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("queues", JsonValue, nullable=False),  # ["*"] for every queue
    Column("scopes", JsonValue, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("last_used_at", Timestamp, nullable=True),
    Column("revoked_at", Timestamp, nullable=True),
    sqlite_autoincrement=True,
)

# Periodic jobs (migration 0006): one row per schedule that a worker declared, by name. The
# row holds the schedule's definition as last declared and where it stands: ``next_run_at``
# is its first tick not yet handled. A tick's job is a job of ``queue`` whose idempotency key
# is ``schedule:<name>:<tick>`` (``jobq/schedules.py``); ``last_job_id`` is not a foreign key,
# since retention deletes old jobs.
schedules = Table(
    "jobq_schedules",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("task_type", String(128), nullable=False),
    Column("queue", String(128), nullable=False),
    Column("expression", String(255), nullable=False),  # cron, or "every 30s"
    Column("tz", String(64), nullable=True),
    Column("payload", JsonValue, nullable=True),
    Column("catch_up", Boolean, nullable=False),
    Column("grace_seconds", Float, nullable=False),
    Column("max_attempts", Integer, nullable=True),
    Column("definition", String(64), nullable=False),  # Schedule.definition, a digest
    Column("next_run_at", Timestamp, nullable=False),
    Column("last_run_at", Timestamp, nullable=True),  # the last enqueued tick
    Column("last_job_id", BigId, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("declared_at", Timestamp, nullable=False),  # last declared by a worker
)

# Queues that an operator paused (migration 0007). A row only for a queue that was ever paused
# or resumed; a queue is paused while its row says so. The claim leaves a paused queue's jobs
# alone (``store/leases.py``); jobs already running finish as usual.
queues = Table(
    "jobq_queues",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("paused_at", Timestamp, nullable=True),
    # Limits across the cluster (migration 0009, ``store/limits.py``): most running at once,
    # and starts per second as a token bucket (``burst`` tokens at most; ``tokens`` of them
    # were left at ``tokens_at``).
    Column("concurrency", Integer, nullable=True),
    Column("rate", Float, nullable=True),
    Column("burst", Integer, nullable=True),
    Column("tokens", Float, nullable=True),
    Column("tokens_at", Timestamp, nullable=True),
)
