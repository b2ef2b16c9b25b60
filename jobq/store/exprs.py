"""The SQL expressions the store's statements share: the fencing guard, and the few whose
text differs between PostgreSQL and SQLite.

Those compile per dialect, so the statements of the concern modules are written once. All
times come from the database's clock (invariant 5): a worker's own clock never enters a
statement.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, literal, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement
from sqlalchemy.types import Boolean, String

from jobq.store.tables import Timestamp, jobs
from jobq.types import JobState

_RUNNING = JobState.RUNNING.value

def in_state(state: str) -> ColumnElement[bool]:
    """``jobs.state = '<state>'`` with the state written into the statement, not bound.

    The partial indexes (``WHERE state = 'pending'``, ``'running'``) are usable only by a plan
    that can see the state: with ``state = $1`` PostgreSQL's generic plan, which psycopg's
    prepared statements get after five runs, cannot use them. With statistics that still
    said "the table is empty" it sorted every pending job on each claim instead (15 ms a
    claim of 10 with 20,000 pending, against well under 1 ms on the claim index).
    """
    return jobs.c.state == literal_column(f"'{JobState(state).value}'", String)


#: Clearing the lease is part of every move out of ``running``.
NO_LEASE = {"worker_id": None, "lease_token": None, "lease_expires_at": None}

#: ... except to ``done``, which keeps who ran it: a done job's row is the record of its
#: successful attempt (``attempt_log``), so ``worker_id`` stays.
DONE_LEASE = {"lease_token": None, "lease_expires_at": None}


def held(token: Any, job_id: Any = None, running: Any = None) -> ColumnElement[bool]:
    """THE fencing guard: the job is running under the claim whose token is ``token``.

    ``token`` is a value, a bound parameter or a column; or, for a set of claims, a ready
    condition on ``jobs.lease_token`` (the dialect's ``any_of``). ``job_id`` names the row
    when the caller knows it. Every write by a claim's holder is guarded by this, so a worker
    whose lease was lost (rescued, cancelled) changes nothing: zero rows means somebody else
    got there first.

    ``running``: for a batch joined row by row (ids and tokens as arrays), a column of that
    batch holding ``'running'`` in every row, compared instead of the literal. As a join
    condition the planner cannot answer it from the ``running`` partial index, whose dead
    entries (every job that ran since the last vacuum) it would otherwise read on each
    batch: measured, a completion of 10 slowed from 2.6 to 8.2 ms over 20,000 jobs. Looked
    up by id instead, a batch costs what its rows cost.
    """
    is_condition = isinstance(token, ColumnElement) and isinstance(token.type, Boolean)
    matches = token if is_condition else jobs.c.lease_token == token
    state = in_state(_RUNNING) if running is None else jobs.c.state == running
    guard = and_(state, matches)
    return guard if job_id is None else and_(jobs.c.id == job_id, guard)


class db_now(FunctionElement[Any]):
    """The database's current time."""

    type = Timestamp()
    inherit_cache = True


@compiles(db_now, "postgresql")
def _now_pg(element: db_now, compiler: Any, **kw: Any) -> str:
    # now() is the transaction's start and STABLE, so the planner can use it as an index bound
    # (clock_timestamp() is VOLATILE and cannot). Our transactions are short; a clock a few
    # milliseconds early only makes a lease a little shorter or a due job wait one more poll.
    return "now()"


@compiles(db_now, "sqlite")
def _now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    # Unix seconds with sub-second precision; works on SQLite < 3.42 (no unixepoch('subsec')).
    return "((julianday('now') - 2440587.5) * 86400.0)"


class seconds_from_now(FunctionElement[Any]):
    """The database's current time plus a number of seconds (a bound parameter)."""

    type = Timestamp()
    inherit_cache = True

    def __init__(self, seconds: float | ColumnElement[Any]) -> None:
        arg = seconds if isinstance(seconds, ColumnElement) else literal(float(seconds))
        super().__init__(arg)


@compiles(seconds_from_now, "postgresql")
def _plus_pg(element: seconds_from_now, compiler: Any, **kw: Any) -> str:
    (arg,) = element.clauses
    return f"(now() + make_interval(secs => CAST({compiler.process(arg, **kw)} AS double precision)))"


@compiles(seconds_from_now, "sqlite")
def _plus_sqlite(element: seconds_from_now, compiler: Any, **kw: Any) -> str:
    (arg,) = element.clauses
    return f"(((julianday('now') - 2440587.5) * 86400.0) + {compiler.process(arg, **kw)})"


class new_token(FunctionElement[Any]):
    """A fresh random fencing token, drawn per row (128 bits: never reused in practice)."""

    type = String()
    inherit_cache = True


@compiles(new_token, "postgresql")
def _token_pg(element: new_token, compiler: Any, **kw: Any) -> str:
    return "replace(gen_random_uuid()::text, '-', '')"


@compiles(new_token, "sqlite")
def _token_sqlite(element: new_token, compiler: Any, **kw: Any) -> str:
    return "lower(hex(randomblob(16)))"


# PostgreSQL advisory lock keys (64-bit), one per kind of work that runs in one process at a
# time; the two must differ, or pruning and migrating would silently exclude each other.
#: The schema migration: "jobq" in ASCII (unchanged since the first release, so processes of
#: older versions starting at the same time still wait for each other).
MIGRATION_LOCK = 0x6A6F6271
#: The pruning of finished jobs: "jobqprun" in ASCII.
MAINTENANCE_LOCK = 0x6A6F6271_7072756E
#: The seed of the concurrency keys' lock hashes: "jobqkey" in ASCII.
KEY_LOCK_SEED = 0x6A6F62716B6579


class try_maintenance_lock(FunctionElement[Any]):
    """True when this transaction may run maintenance: PostgreSQL takes a transaction-scoped
    advisory lock (so one process at a time prunes); SQLite's writer already holds the
    database's only write lock (BEGIN IMMEDIATE)."""

    type = Boolean()
    inherit_cache = True


@compiles(try_maintenance_lock, "postgresql")
def _lock_pg(element: try_maintenance_lock, compiler: Any, **kw: Any) -> str:
    return f"pg_try_advisory_xact_lock({MAINTENANCE_LOCK})"


@compiles(try_maintenance_lock, "sqlite")
def _lock_sqlite(element: try_maintenance_lock, compiler: Any, **kw: Any) -> str:
    return "1"


class key_lock(FunctionElement[Any]):
    """Try to take, and then hold to the end of the transaction, the lock of one concurrency
    key (``store/limits.py``): true when taken. PostgreSQL's transaction-scoped advisory lock
    on a 64-bit hash of the key, without waiting: a claim that finds a key's lock taken leaves
    that key's jobs to the claim holding it, and no two claims ever wait for each other's keys
    (so lock order across queues does not matter). A hash collision only makes two keys take
    turns. On SQLite the writer already holds the database's only write lock."""

    type = Boolean()
    inherit_cache = True

    def __init__(self, key: ColumnElement[Any]) -> None:
        super().__init__(key)


@compiles(key_lock, "postgresql")
def _key_lock_pg(element: key_lock, compiler: Any, **kw: Any) -> str:
    (key,) = element.clauses
    # Seeded, so these locks never meet the migration's or pruning's fixed keys by design.
    return (f"pg_try_advisory_xact_lock(hashtextextended({compiler.process(key, **kw)}, "
            f"{KEY_LOCK_SEED}))")


@compiles(key_lock, "sqlite")
def _key_lock_sqlite(element: key_lock, compiler: Any, **kw: Any) -> str:
    return "1"


class unindexed(FunctionElement[Any]):
    """A column that SQLite must not choose an index for (a unary ``+``, SQLite's own way to
    say so); the column itself elsewhere. For a query whose best index SQLite, without
    statistics, would pass over for one on this column."""

    inherit_cache = True

    def __init__(self, col: ColumnElement[Any]) -> None:
        super().__init__(col)
        self.type = col.type


@compiles(unindexed)
def _unindexed(element: unindexed, compiler: Any, **kw: Any) -> str:
    (col,) = element.clauses
    return compiler.process(col, **kw)


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: unindexed, compiler: Any, **kw: Any) -> str:
    (col,) = element.clauses
    return f"+{compiler.process(col, **kw)}"


class seconds_after(FunctionElement[Any]):
    """A timestamp column plus a number of seconds (a column or bound value): the end of a
    finished unique job's ``unique_for`` window."""

    type = Timestamp()
    inherit_cache = True

    def __init__(self, at: ColumnElement[Any], seconds: ColumnElement[Any]) -> None:
        super().__init__(at, seconds)


@compiles(seconds_after, "postgresql")
def _after_pg(element: seconds_after, compiler: Any, **kw: Any) -> str:
    at, secs = (compiler.process(c, **kw) for c in element.clauses)
    return f"({at} + make_interval(secs => CAST({secs} AS double precision)))"


@compiles(seconds_after, "sqlite")
def _after_sqlite(element: seconds_after, compiler: Any, **kw: Any) -> str:
    at, secs = (compiler.process(c, **kw) for c in element.clauses)
    return f"({at} + {secs})"


class has_tag(FunctionElement[Any]):
    """The job's ``tags`` hold ``tag`` (a bound value). PostgreSQL: ``tags @> '["tag"]'``,
    which the GIN index ``ix_jobq_jobs_tags`` answers; SQLite: a look into the row's JSON
    array (json_each), with no index to help (``tables.py``)."""

    type = Boolean()
    inherit_cache = True

    def __init__(self, tag: Any) -> None:
        super().__init__(tag)


@compiles(has_tag, "postgresql")
def _tag_pg(element: has_tag, compiler: Any, **kw: Any) -> str:
    (tag,) = element.clauses
    col = compiler.process(jobs.c.tags, **kw)
    return f"({col} @> jsonb_build_array(CAST({compiler.process(tag, **kw)} AS text)))"


@compiles(has_tag, "sqlite")
def _tag_sqlite(element: has_tag, compiler: Any, **kw: Any) -> str:
    (tag,) = element.clauses
    col = compiler.process(jobs.c.tags, **kw)
    return (f"EXISTS (SELECT 1 FROM json_each({col}) "
            f"WHERE json_each.value = {compiler.process(tag, **kw)})")
