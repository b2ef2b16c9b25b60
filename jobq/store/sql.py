"""The store: the only place in jobq that speaks SQL.

One implementation serves SQLite and PostgreSQL. The statements are written once in SQLAlchemy
Core; what must differ is compiled per dialect (``exprs.py``) or set on the connection
(``engine.py``: SQLite's BEGIN IMMEDIATE). Every method that moves a job is one guarded
statement: it names the state it expects and, for a running job, the claim's fencing token.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Float,
    Integer,
    Select,
    String,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    column,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from jobq.errors import (
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    KeyNotFound,
    StoreUnavailable,
)
from jobq.keys import ApiKey, NewKey
from jobq.store.engine import READ_ONLY
from jobq.store.exprs import (
    db_now,
    new_token,
    seconds_from_now,
    try_maintenance_lock,
    unindexed,
)
from jobq.store.tables import api_keys, attempts, jobs, workers
from jobq.types import (
    Attempt,
    AttemptOutcome,
    ClaimedJob,
    EnqueueResult,
    Job,
    JobState,
    Lease,
    NewJob,
    Page,
    Stats,
    WorkerInfo,
    WorkerRegistration,
)

log = logging.getLogger("jobq.store")

P = ParamSpec("P")
R = TypeVar("R")

PENDING, RUNNING = JobState.PENDING.value, JobState.RUNNING.value
DONE, FAILED, CANCELLED = JobState.DONE.value, JobState.FAILED.value, JobState.CANCELLED.value

#: PostgreSQL channel on which idle workers are woken; the payload is the queue's name.
NOTIFY_CHANNEL = "jobq_jobs"

#: Clearing the lease is part of every move out of ``running``.
_NO_LEASE = {"worker_id": None, "lease_token": None, "lease_expires_at": None}

#: running → done for a batch on PostgreSQL: the batch arrives as three arrays, so the text
#: of the statement is the same for every batch. RETURNING gives the tokens whose guard held.
_FINISHED = (
    func.unnest(
        bindparam("c_ids", type_=pg_dialect.ARRAY(BigInteger)),
        bindparam("c_tokens", type_=pg_dialect.ARRAY(String)),
        cast(bindparam("c_results", type_=pg_dialect.ARRAY(Text)), pg_dialect.ARRAY(pg_dialect.JSONB)),
    )
    .table_valued("id", "token", "result")
    .render_derived(name="finished")
)
_COMPLETE_MANY_PG = (
    update(jobs)
    .where(
        jobs.c.id == _FINISHED.c.id,
        jobs.c.lease_token == _FINISHED.c.token,
        jobs.c.state == RUNNING,
    )
    .values(state=DONE, result=_FINISHED.c.result, finished_at=db_now(), **_NO_LEASE)
    .returning(_FINISHED.c.token)
)


def _json_text(value: Any) -> str:
    """A result as JSON text, as the JSON column itself would write it."""
    return json.dumps(value)


#: One job's running → done, for executemany; the caller has locked the row and checked its
#: token in the same transaction, and the guard repeats that check.
_COMPLETE_ONE = (
    update(jobs)
    .where(
        jobs.c.id == bindparam("b_id"),
        jobs.c.lease_token == bindparam("b_token"),
        jobs.c.state == RUNNING,
    )
    .values(
        state=DONE,
        result=bindparam("b_result", type_=jobs.c.result.type),
        finished_at=db_now(),
        **_NO_LEASE,
    )
)


def _translate(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn driver errors that mean "the database is not available now" into StoreUnavailable."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sa_exc.TimeoutError as exc:  # pool exhausted
            raise StoreUnavailable(f"no database connection free: {exc}") from exc
        except sa_exc.OperationalError as exc:
            raise StoreUnavailable(f"database unavailable: {exc.orig}") from exc
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(f"database connection lost: {exc.orig}") from exc
            raise

    return wrapper


def _job(row: Any, attempt_rows: Sequence[Any] = ()) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        task_type=m["task_type"],
        payload=m["payload"],
        queue=m["queue"],
        priority=m["priority"],
        state=JobState(m["state"]),
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        run_at=m["run_at"],
        idempotency_key=m["idempotency_key"],
        worker_id=m["worker_id"],
        lease_token=m["lease_token"],
        lease_expires_at=m["lease_expires_at"],
        result=m["result"],
        last_error=m["last_error"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        attempt_log=tuple(_attempt(a) for a in attempt_rows),
    )


def _attempt(row: Any) -> Attempt:
    m = row._mapping
    return Attempt(
        id=m["id"],
        job_id=m["job_id"],
        attempt=m["attempt"],
        worker_id=m["worker_id"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        outcome=AttemptOutcome(m["outcome"]),
        error=m["error"],
        traceback=m["traceback"],
    )


_MAX_ID = 2**63 - 1  # BIGINT, and SQLite's INTEGER


def encode_cursor(job_id: int) -> str:
    return base64.urlsafe_b64encode(f"j{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        digits = raw[1:]
        # Only what encode_cursor writes: int() alone would also take "+5", " 5" and "1_0".
        if not raw.startswith("j") or not (digits.isascii() and digits.isdigit()):
            raise ValueError
        value = int(digits)
        # Beyond BIGINT the drivers fail (OverflowError, DataError) instead of finding nothing.
        if not 1 <= value <= _MAX_ID:
            raise ValueError
        return value
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None


def _same_request(job: Job, new: NewJob) -> bool:
    return (
        job.task_type == new.task_type
        and job.payload == new.payload
        and job.queue == new.queue
        and job.priority == new.priority
        and job.max_attempts == new.max_attempts
    )


def _created_job(new: NewJob, row: Any) -> Job:
    """The job that ``new`` became: its fields as given, with what the database chose (the
    id and times) from ``row``, so the payload is not read back. (PostgreSQL's JSONB keeps
    the value, not the text: a stored ``-0.0`` reads back as ``0.0``, ``1e300`` as an
    integer.)"""
    # The fields set directly: the frozen dataclass's __init__ costs 13 times as much, which
    # was a tenth of enqueue_many's time in batches of 1,000.
    job = object.__new__(Job)
    job.__dict__.update(
        id=row.id, task_type=new.task_type, payload=new.payload, queue=new.queue,
        priority=new.priority, state=JobState.PENDING, attempts=0,
        max_attempts=new.max_attempts, run_at=row.run_at, idempotency_key=new.idempotency_key,
        worker_id=None, lease_token=None, lease_expires_at=None, result=None, last_error=None,
        created_at=row.created_at, started_at=None, finished_at=None, attempt_log=(),
    )
    return job


class SqlStore:
    """Jobs, attempts and workers in a SQL database. Thread-safe; one per process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # SQLite has one writer at a time, and a write transaction locks the whole file: an
        # idle worker's empty claim or rescue must not take that lock (a process frozen
        # while holding it would stall every other process), so those look first.
        self._single_writer = self.dialect == "sqlite"

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _autocommit(self) -> Iterator[Connection]:
        """A connection on which each statement is its own transaction (PostgreSQL): for a
        write that is one statement, it saves the BEGIN and COMMIT round trips."""
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    def _exists(self, query: Select[Any], params: dict[str, Any] | None = None) -> bool:
        """Whether ``query`` finds anything, read in a read-only transaction (SQLite renders
        no FOR UPDATE; this is only used there)."""
        with self._read() as conn:
            return conn.execute(query, params).first() is not None

    def _insert(self) -> Any:
        if self.dialect == "postgresql":
            return pg_dialect.insert(jobs)
        return sqlite_dialect.insert(jobs)

    def _notify(self, conn: Connection, queues: Iterable[str]) -> None:
        """Wake idle workers of ``queues``: one notification per queue, sent by PostgreSQL at
        commit (never for a rolled-back transaction). SQLite has no such thing: its workers
        poll. Callers pass the queues of jobs that became pending now."""
        if self.dialect != "postgresql":
            return
        for queue in sorted(set(queues)):
            conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, queue)))

    def dispose(self) -> None:
        self.engine.dispose()

    def listen(
        self, queues: Collection[str], wake: Callable[[], None]
    ) -> Coroutine[Any, Any, None] | None:
        """A coroutine that calls ``wake`` whenever jobs of ``queues`` may have become due
        (PostgreSQL LISTEN, on its own connection; runs until cancelled), or None where the
        database sends no wake-ups (SQLite: its workers poll)."""
        from jobq.store.notify import listen, listen_dsn

        dsn = listen_dsn(self.engine)
        return None if dsn is None else listen(dsn, queues, wake)

    @_translate
    def server_settings(self) -> dict[str, Any]:
        """The database server's settings that bound a benchmark's figures."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                out = {name: conn.exec_driver_sql(f"SHOW {name}").scalar()
                       for name in ("server_version", "fsync", "synchronous_commit",
                                    "shared_buffers", "wal_level", "max_connections")}
            else:
                sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
                out = {
                    "sqlite_version": conn.exec_driver_sql("select sqlite_version()").scalar(),
                    "journal_mode": conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
                    "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync),
                    "busy_timeout_ms": conn.exec_driver_sql("PRAGMA busy_timeout").scalar(),
                }
            conn.rollback()
        return out

    @_translate
    def ping(self) -> datetime:
        """The database's clock; raises StoreUnavailable when it cannot be reached."""
        with self._read() as conn:
            return conn.execute(select(db_now())).scalar_one()

    # -- enqueue ----------------------------------------------------------------------------

    #: Most jobs one INSERT statement carries; a bigger batch takes several, in one transaction.
    ENQUEUE_CHUNK = 1000

    def _values(self, new: NewJob) -> dict[str, Any]:
        """One job's fields, as ``_enqueue_stmt`` takes them."""
        return {
            "task_type": new.task_type,
            "payload": new.payload,
            "queue": new.queue,
            "priority": new.priority,
            "max_attempts": new.max_attempts,
            "idempotency_key": new.idempotency_key,
            "at": new.run_at,
            "delay": float(new.delay_seconds or 0),
        }

    @functools.cached_property
    def _enqueue_stmt(self) -> Any:
        """The INSERT of the jobs given by ``_enqueue_params``. A taken idempotency key is
        skipped and returns no row; the others return what the database chose for them.
        Built once, so it is compiled once.

        PostgreSQL: the jobs travel as one JSON array, ``INSERT … SELECT … FROM
        jsonb_array_elements(:given) WITH ORDINALITY ORDER BY ordinality``. Measured on 2 cores
        with fsync on, 1,000 jobs per transaction: about 20,000 jobs/s, against 4,200 for
        SQLAlchemy's multi-row VALUES (psycopg parses its 8,000 placeholders in Python, every
        time) and about half as fast again for ``unnest()`` of one array per field (psycopg
        quotes each array element in Python). SQLite: a list of parameter sets, which
        SQLAlchemy sends as multi-row VALUES ("insertmanyvalues").
        """
        insert_ = self._insert()
        if self.dialect == "postgresql":
            given = (
                func.jsonb_array_elements(cast(bindparam("given"), pg_dialect.JSONB))
                .table_valued(column("value", pg_dialect.JSONB), with_ordinality="ord")
                .render_derived(name="given")
            )
            v = given.c.value
            insert_ = insert_.from_select(
                ["task_type", "payload", "queue", "priority", "max_attempts", "idempotency_key",
                 "state", "attempts", "run_at", "created_at"],
                select(
                    v["task_type"].astext, v["payload"], v["queue"].astext,
                    cast(v["priority"].astext, Integer), cast(v["max_attempts"].astext, Integer),
                    v["idempotency_key"].astext, literal(PENDING), literal(0),
                    func.coalesce(
                        cast(v["at"].astext, pg_dialect.TIMESTAMP(timezone=True)),
                        seconds_from_now(cast(v["delay"].astext, Float)),
                    ),
                    db_now(),
                ).order_by(given.c.ord),
            )
        else:
            # The given time, else the database's now plus the delay (0: due now).
            run_at = func.coalesce(
                bindparam("at", type_=jobs.c.run_at.type),
                seconds_from_now(bindparam("delay", type_=Float())),
            )
            insert_ = insert_.values(
                state=PENDING, attempts=0, run_at=run_at, created_at=db_now()
            )
        made = insert_.on_conflict_do_nothing(index_elements=[jobs.c.idempotency_key]).returning(
            jobs.c.id, jobs.c.idempotency_key, jobs.c.run_at, jobs.c.created_at, jobs.c.queue
        )
        if self.dialect != "postgresql":
            return made  # SQLite's workers poll: nobody to wake
        # The wake-up rides on the INSERT itself (a round trip fewer, which was an eighth of
        # a 100-job batch's time): once per queue that got a job due now, sent at commit.
        # PostgreSQL delivers identical notifications of one transaction once, so a batch
        # written in several chunks still wakes each queue's workers once.
        ins = made.cte("ins")
        due = select(ins.c.queue).where(ins.c.run_at <= ins.c.created_at).distinct().subquery()
        woken = select(func.count(func.pg_notify(NOTIFY_CHANNEL, due.c.queue))).scalar_subquery()
        return select(ins.c.id, ins.c.idempotency_key, ins.c.run_at, ins.c.created_at,
                      woken.label("woken"))

    def _enqueue_params(self, news: Sequence[NewJob]) -> Any:
        """The parameters of ``_enqueue_stmt`` for ``news``."""
        rows = [self._values(new) for new in news]
        if self.dialect != "postgresql":
            return rows
        dialect, to_utc = self.engine.dialect, jobs.c.run_at.type.process_bind_param

        def run_at(value: Any) -> str:  # payloads hold JSON values only: this sees run_at
            if not isinstance(value, datetime):
                raise TypeError(f"{type(value).__name__} is not JSON serializable")
            return to_utc(value, dialect).isoformat()  # naive means UTC, as for one job

        return {"given": json.dumps(rows, default=run_at)}

    def enqueue(self, new: NewJob) -> EnqueueResult:
        """Insert one job; with an idempotency key, return the existing job for a repeat."""
        try:
            return self.enqueue_many([new])[0]
        except IdempotencyConflict as exc:
            exc.index = None  # one job, not an item of a batch
            raise

    @_translate
    def enqueue_many(self, news: Sequence[NewJob]) -> list[EnqueueResult]:
        """Insert jobs in one transaction, all or nothing; the results are in input order.

        Idempotency keys work as in ``enqueue``, between the items too: an item whose key an
        existing job or an earlier item of the batch holds with the same request gets that
        job (``created`` False). With a different request it is an IdempotencyConflict whose
        ``index`` names the item, and nothing is stored. Idle workers of the queues that got
        a job that is due now are woken at commit (on PostgreSQL by the INSERT statement itself,
        see ``_enqueue_stmt``).
        """
        if not news:
            return []
        first: dict[str, int] = {}  # idempotency key -> the first item that has it
        fresh: list[int] = []  # the items to insert: those without a key, each key's first
        for i, new in enumerate(news):
            key = new.idempotency_key
            if key is None:
                fresh.append(i)
            elif key not in first:
                first[key] = i
                fresh.append(i)
        # Keyed rows go in in key order: a unique-index insert waits for another transaction
        # that inserted the same key, so two batches that took shared keys in different orders
        # would deadlock (PostgreSQL). The same order everywhere leaves waits without cycles.
        # (Ids then follow key order among keyed items; results stay in input order.)
        if first:
            fresh.sort(key=lambda i: (news[i].idempotency_key is not None,
                                      news[i].idempotency_key or "", i))
        with self._write() as conn:
            rows = []
            for start in range(0, len(fresh), self.ENQUEUE_CHUNK):
                chunk = [news[i] for i in fresh[start:start + self.ENQUEUE_CHUNK]]
                rows += conn.execute(self._enqueue_stmt, self._enqueue_params(chunk)).all()
            made = {r.idempotency_key for r in rows if r.idempotency_key is not None}
            # RETURNING promises no order. Ids are drawn in the order the rows are inserted,
            # which is the order of the items (ORDER BY ordinality; VALUES in order; chunks one
            # after another), so sorted by id the rows pair with the items that were inserted:
            # the fresh ones but those whose key an existing job holds.
            rows.sort(key=lambda r: r.id)
            if not first:  # no keys: every item was inserted, in order (the common case)
                if len(rows) != len(news):
                    raise RuntimeError("enqueue_many: a row per item was expected")
                return [EnqueueResult(_created_job(new, row), created=True)
                        for new, row in zip(news, rows)]
            inserted = [i for i in fresh if news[i].idempotency_key in made
                        or news[i].idempotency_key is None]
            if [r.idempotency_key for r in rows] != [news[i].idempotency_key for i in inserted]:
                raise RuntimeError("enqueue_many: the inserted rows do not pair with the items")
            created = {i: _created_job(news[i], row) for i, row in zip(inserted, rows)}
            held = {news[i].idempotency_key: job for i, job in created.items()}
            held.update(self._jobs_by_key(conn, [k for k in first if k not in made]))
            results = []
            for i, new in enumerate(news):
                job = created.get(i)
                if job is not None:
                    results.append(EnqueueResult(job, created=True))
                    continue
                key = new.idempotency_key
                assert key is not None
                job = held.get(key)
                if job is None:
                    # Deleted (pruned) between the INSERT that found it and the SELECT.
                    raise StoreUnavailable(f"the job of idempotency_key {key!r} just vanished")
                if not _same_request(job, new):
                    if key in made:  # made by this batch, which this error rolls back
                        raise IdempotencyConflict.within_batch(key, i, first[key])
                    raise IdempotencyConflict(key, job.id, index=i)
                results.append(EnqueueResult(job, created=False))
        return results

    @staticmethod
    def _jobs_by_key(conn: Connection, keys: Sequence[str]) -> dict[str, Job]:
        """The jobs that hold ``keys``, by key."""
        found: dict[str, Job] = {}
        for start in range(0, len(keys), 1000):  # a bounded number of parameters each
            stmt = select(jobs).where(jobs.c.idempotency_key.in_(keys[start:start + 1000]))
            found.update((r.idempotency_key, _job(r)) for r in conn.execute(stmt))
        return found

    # -- read -------------------------------------------------------------------------------

    @_translate
    def get(self, job_id: int, *, with_attempts: bool = True) -> Job:
        with self._read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if row is None:
                raise JobNotFound(job_id)
            attempt_rows: Sequence[Any] = ()
            if with_attempts:
                attempt_rows = conn.execute(
                    select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.id)
                ).all()
            return _job(row, attempt_rows)

    @_translate
    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first. ``cursor`` is the ``next_cursor`` of the previous page."""
        stmt = select(jobs).order_by(jobs.c.id.desc()).limit(limit + 1)
        if state is not None:
            stmt = stmt.where(jobs.c.state == JobState(state).value)
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if task_type is not None:
            stmt = stmt.where(jobs.c.task_type == task_type)
        if cursor is not None:
            stmt = stmt.where(jobs.c.id < decode_cursor(cursor))
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        items = [_job(r) for r in rows[:limit]]
        next_cursor = encode_cursor(items[-1].id) if len(rows) > limit and items else None
        return Page(items=items, next_cursor=next_cursor)

    # -- the worker's transitions -----------------------------------------------------------

    @_translate
    def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[ClaimedJob]:
        """pending → running for up to ``limit`` due jobs, highest priority first.

        One statement: the candidates are locked with SKIP LOCKED on PostgreSQL, so concurrent
        claimers pass each other by; on SQLite the whole transaction holds the write lock.
        The attempts are written in the same transaction.
        """
        if limit <= 0:
            return []
        probe, claim, record = self._claim_stmts
        params = {"c_queues": list(queues), "c_limit": limit, "c_worker": worker_id,
                  "c_lease": float(lease_seconds)}
        if self.dialect == "postgresql":
            # One statement that is its own transaction: one round trip instead of four
            # (BEGIN, claim, attempts, COMMIT), which is most of what an idle worker's
            # pickup waits for.
            with self._autocommit() as conn:
                rows = conn.execute(claim, params).all()
        else:
            if not self._exists(probe, params):
                return []
            with self._write() as conn:
                rows = conn.execute(claim, params).all()
                if rows:
                    conn.execute(record, {"c_ids": [r.id for r in rows]})
        if not rows:
            return []
        claimed = [
            ClaimedJob(
                job=_job(r),
                lease=Lease(
                    job_id=r.id, token=r.lease_token, attempt=r.attempts,
                    max_attempts=r.max_attempts,
                ),
            )
            for r in rows
        ]
        # RETURNING has no order; hand jobs out in the order they were chosen.
        claimed.sort(key=lambda c: (-c.job.priority, c.job.run_at, c.job.id))
        return claimed

    @functools.cached_property
    def _claim_stmts(self) -> tuple[Any, Any, Any]:
        """The claim's statements, built once: a statement built per call costs more in
        SQLAlchemy (building it, then its cache key) than PostgreSQL takes to run it, about
        half of a one-job claim, which is what an idle worker's pickup waits for.

        - probe: whether any job is due (SQLite looks before it takes the write lock);
        - claim: the candidates, locked and limited (``_picked``), moved to running; on
          PostgreSQL it writes their attempt rows too;
        - record: SQLite's second statement: the attempt rows, copied from the claimed rows in
          the database, with no per-row parameters to bind.
        """
        # IN, not = ANY(array), for the queues, on PostgreSQL too: with one queue the planner
        # reads the claim index in its order and stops at the limit; with an array it cannot
        # know that and sorts every due job first. (A worker's queues never change, so the
        # text stays the same, and so does the prepared statement.)
        due = and_(jobs.c.state == PENDING,
                   jobs.c.queue.in_(bindparam("c_queues", expanding=True)),
                   jobs.c.run_at <= db_now())
        order = (jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
        probe = select(jobs.c.id).where(due).limit(1)
        candidates = (
            select(jobs.c.id).where(due).order_by(*order)
            .limit(bindparam("c_limit", type_=Integer))
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(jobs)
            # No second "state = pending" here: the candidates were locked (SKIP LOCKED
            # re-checks each row's state as it locks it; SQLite holds the write lock), and
            # with it PostgreSQL, misled by stale statistics, may plan a scan of every
            # pending row against the picked ids (290 ms a claim with 10k pending).
            .where(jobs.c.id.in_(self._picked(candidates)))
            .values(
                state=RUNNING,
                attempts=jobs.c.attempts + 1,
                worker_id=bindparam("c_worker", type_=String),
                lease_token=new_token(),
                lease_expires_at=seconds_from_now(bindparam("c_lease", type_=Float)),
                started_at=db_now(),
            )
            .returning(*jobs.c)
        )
        columns = ["job_id", "attempt", "worker_id", "lease_token", "started_at", "outcome"]
        running = literal(AttemptOutcome.RUNNING.value)
        if self.dialect == "postgresql":
            # The attempts in the same statement, from the claim's RETURNING rows (a
            # data-modifying CTE runs whether or not the outer SELECT reads it).
            claimed = claim.cte("claimed")
            recorded = insert(attempts).from_select(columns, select(
                claimed.c.id, claimed.c.attempts, claimed.c.worker_id, claimed.c.lease_token,
                claimed.c.started_at, running,
            )).cte("recorded")
            return probe, select(claimed).add_cte(recorded), None
        record = insert(attempts).from_select(columns, select(
            jobs.c.id, jobs.c.attempts, jobs.c.worker_id, jobs.c.lease_token,
            jobs.c.started_at, running,
        ).where(jobs.c.id.in_(bindparam("c_ids", expanding=True))))
        return probe, claim, record

    @staticmethod
    def _picked(candidates: Select[Any]) -> Select[Any]:
        """The ids chosen by ``candidates`` (a locking, limited SELECT), computed exactly once.

        PostgreSQL may plan ``id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`` as a nested-loop
        semi join that re-runs the subquery for every outer row; each re-run skips the rows
        this very statement has just updated and locks the next ones, so far more than ``n``
        rows change. A MATERIALIZED CTE is evaluated once, which keeps the limit a limit.
        """
        picked = candidates.cte("picked").prefix_with("MATERIALIZED", dialect="postgresql")
        return select(picked.c.id)

    def _guard(self, lease: Lease) -> Any:
        return and_(
            jobs.c.id == lease.job_id,
            jobs.c.state == RUNNING,
            jobs.c.lease_token == lease.token,
        )

    def _close_attempt(
        self,
        conn: Connection,
        token: str,
        outcome: AttemptOutcome,
        error: str | None = None,
        tb: str | None = None,
    ) -> None:
        conn.execute(
            update(attempts)
            .where(
                attempts.c.lease_token == token,
                attempts.c.outcome == AttemptOutcome.RUNNING.value,
            )
            .values(outcome=outcome.value, finished_at=db_now(), error=error, traceback=tb)
        )

    def complete(self, lease: Lease, result: Any) -> bool:
        """running → done. False when the lease was lost (the job is not changed)."""
        return lease.token in self.complete_many([(lease, result)])

    @_translate
    def complete_many(self, finished: Sequence[tuple[Lease, Any]]) -> set[str]:
        """running → done for many jobs at once, each row still guarded by its own fencing
        token. Returns the tokens whose write took; a lease that was lost meanwhile (rescued,
        cancelled) is left out and its job is not changed.

        Two statements whatever the batch size, each compiled once and cached, so that
        PostgreSQL's prepared statements are reused too: on PostgreSQL one UPDATE … FROM
        unnest(arrays); on SQLite a check of the tokens and an executemany, both in process
        (the database is a library call away). Then the attempts are closed.
        """
        if not finished:
            return set()
        with self._write() as conn:
            if self.dialect == "postgresql":
                taken = set(conn.execute(_COMPLETE_MANY_PG, {
                    "c_ids": [lease.job_id for lease, _ in finished],
                    "c_tokens": [lease.token for lease, _ in finished],
                    "c_results": [_json_text(result) for _, result in finished],
                }).scalars())
            else:
                held = dict(conn.execute(
                    select(jobs.c.id, jobs.c.lease_token).where(
                        jobs.c.id.in_([lease.job_id for lease, _ in finished]),
                        jobs.c.state == RUNNING,
                    )
                ).all())
                valid = [(lease, result) for lease, result in finished
                         if held.get(lease.job_id) == lease.token]
                if valid:
                    conn.execute(
                        _COMPLETE_ONE,
                        [{"b_id": lease.job_id, "b_token": lease.token, "b_result": result}
                         for lease, result in valid],
                    )
                taken = {lease.token for lease, _ in valid}
            if taken:
                conn.execute(
                    update(attempts)
                    .where(
                        self._any(attempts.c.lease_token, taken, String),
                        attempts.c.outcome == AttemptOutcome.RUNNING.value,
                    )
                    .values(outcome=AttemptOutcome.DONE.value, finished_at=db_now())
                )
        return taken

    def _any(self, col: Any, items: Iterable[Any], item_type: Any) -> Any:
        """``col IN items`` that compiles to the same text for any number of items: one array
        parameter on PostgreSQL (so the statement is prepared once, not once per length);
        SQLite's IN costs nothing to re-parse."""
        if self.dialect == "postgresql":
            return col == any_(bindparam(None, list(items), type_=pg_dialect.ARRAY(item_type)))
        return col.in_(list(items))

    @_translate
    def fail(
        self, lease: Lease, error: str, tb: str, retry_delay_seconds: float
    ) -> JobState | None:
        """running → pending (after ``retry_delay_seconds``) or, with no attempts left, failed.

        Returns the new state, or None when the lease was lost (the job is not changed).
        """
        spent = jobs.c.attempts >= jobs.c.max_attempts
        with self._write() as conn:
            row = conn.execute(
                update(jobs)
                .where(self._guard(lease))
                .values(
                    state=case((spent, FAILED), else_=PENDING),
                    run_at=case((spent, jobs.c.run_at), else_=seconds_from_now(retry_delay_seconds)),
                    finished_at=case((spent, db_now()), else_=None),
                    last_error=error,
                    **_NO_LEASE,
                )
                .returning(jobs.c.state)
            ).first()
            if row is None:
                return None
            self._close_attempt(conn, lease.token, AttemptOutcome.ERROR, error, tb)
        return JobState(row.state)

    @_translate
    def release(self, leases: Sequence[Lease]) -> int:
        """running → pending without charging the attempt (graceful shutdown)."""
        released = 0
        with self._write() as conn:
            for lease in leases:
                changed = conn.execute(
                    update(jobs)
                    .where(self._guard(lease))
                    .values(
                        # run_at stays: the job was due already and keeps its place in line.
                        state=PENDING, attempts=jobs.c.attempts - 1, **_NO_LEASE
                    )
                ).rowcount
                if changed:
                    released += 1
                    self._close_attempt(conn, lease.token, AttemptOutcome.RELEASED)
            if released:
                queues = conn.execute(
                    select(jobs.c.queue).where(jobs.c.id.in_([lease.job_id for lease in leases]))
                ).scalars()
                self._notify(conn, queues)
        return released

    @_translate
    def heartbeat(
        self,
        worker_id: str,
        tokens: Sequence[str],
        lease_seconds: float,
        *,
        registration: WorkerRegistration | None = None,
    ) -> set[str]:
        """Extend the leases this worker still holds; return the tokens that are still valid.

        A token missing from the answer was rescued, cancelled or otherwise lost: the worker
        must stop that job and expect its late writes to be refused. With ``registration``,
        a worker row that was pruned meanwhile (the worker was frozen) is written again.
        """
        with self._write() as conn:
            seen = conn.execute(
                update(workers).where(workers.c.id == worker_id).values(last_heartbeat_at=db_now())
            ).rowcount
            if not seen and registration is not None:
                self._insert_worker(conn, registration)
            if not tokens:
                return set()
            rows = conn.execute(
                update(jobs)
                .where(
                    jobs.c.state == RUNNING,
                    jobs.c.worker_id == worker_id,
                    self._any(jobs.c.lease_token, tokens, String),
                )
                .values(lease_expires_at=seconds_from_now(lease_seconds))
                .returning(jobs.c.lease_token)
            ).all()
        return {r.lease_token for r in rows}

    @_translate
    def rescue(self, limit: int = 1000) -> list[Job]:
        """running → pending (or failed, attempts spent) for jobs whose lease expired."""
        expired = (
            select(jobs.c.id)
            .where(jobs.c.state == RUNNING, jobs.c.lease_expires_at < db_now())
            .order_by(jobs.c.lease_expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        spent = jobs.c.attempts >= jobs.c.max_attempts
        if self._single_writer and not self._exists(expired.limit(1)):
            return []
        with self._write() as conn:
            rows = conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(self._picked(expired)), jobs.c.state == RUNNING,
                       jobs.c.lease_expires_at < db_now())
                .values(
                    state=case((spent, FAILED), else_=PENDING),
                    # run_at stays: a rescued job was due already, so it goes back to the
                    # head of the line rather than behind everything enqueued since.
                    finished_at=case((spent, db_now()), else_=None),
                    last_error="lease expired: the worker stopped heartbeating",
                    **_NO_LEASE,
                )
                .returning(*jobs.c)
            ).all()
            if rows:
                # Same transaction as the rescue, so no new attempt of these jobs can exist yet.
                conn.execute(
                    update(attempts)
                    .where(
                        attempts.c.job_id.in_([r.id for r in rows]),
                        attempts.c.outcome == AttemptOutcome.RUNNING.value,
                    )
                    .values(
                        outcome=AttemptOutcome.LOST.value,
                        finished_at=db_now(),
                        error="lease expired",
                    )
                )
                self._notify(conn, (r.queue for r in rows if r.state == PENDING))
        return [_job(r) for r in rows]

    # -- the operator's transitions ---------------------------------------------------------

    @_translate
    def cancel(self, job_id: int) -> Job:
        """pending | running → cancelled. Cancelling a cancelled job is a no-op."""
        with self._write() as conn:
            row = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_([PENDING, RUNNING]))
                .values(state=CANCELLED, finished_at=db_now(), **_NO_LEASE)
                .returning(*jobs.c)
            ).first()
            if row is not None:
                conn.execute(
                    update(attempts)
                    .where(
                        attempts.c.job_id == job_id,
                        attempts.c.outcome == AttemptOutcome.RUNNING.value,
                    )
                    .values(outcome=AttemptOutcome.CANCELLED.value, finished_at=db_now())
                )
                return _job(row)
            state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar()
        if state is None:
            raise JobNotFound(job_id)
        if state == CANCELLED:
            return self.get(job_id, with_attempts=False)
        raise InvalidTransition(job_id, state, "cancel")

    @_translate
    def retry(self, job_id: int) -> Job:
        """failed | cancelled → pending, with a fresh budget of attempts."""
        with self._write() as conn:
            row = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_([FAILED, CANCELLED]))
                .values(
                    state=PENDING, attempts=0, run_at=db_now(), finished_at=None, result=None
                )
                .returning(*jobs.c)
            ).first()
            if row is not None:
                self._notify(conn, [row.queue])
                return _job(row)
            state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar()
        if state is None:
            raise JobNotFound(job_id)
        raise InvalidTransition(job_id, state, "retry")

    # -- workers ----------------------------------------------------------------------------

    @_translate
    def register_worker(
        self, worker_id: str, host: str, pid: int, queues: Sequence[str], concurrency: int
    ) -> None:
        with self._write() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))
            self._insert_worker(
                conn, WorkerRegistration(worker_id, host, pid, tuple(queues), concurrency)
            )

    @staticmethod
    def _insert_worker(conn: Connection, reg: WorkerRegistration) -> None:
        conn.execute(
            insert(workers).values(
                id=reg.id, host=reg.host, pid=reg.pid, queues=list(reg.queues),
                concurrency=reg.concurrency, started_at=db_now(), last_heartbeat_at=db_now(),
            )
        )

    @_translate
    def deregister_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))

    @_translate
    def prune_workers(self, silent_seconds: float) -> int:
        """Forget workers that have not heartbeated for ``silent_seconds``."""
        with self._write() as conn:
            return conn.execute(
                delete(workers).where(
                    workers.c.last_heartbeat_at < seconds_from_now(-silent_seconds)
                )
            ).rowcount

    #: Most finished jobs one prune_finished call deletes (one short transaction).
    PRUNE_BATCH = 5000

    @_translate
    def prune_finished(self, older_than_seconds: float, limit: int = PRUNE_BATCH) -> int | None:
        """Delete up to ``limit`` jobs that finished (done, failed, cancelled) more than
        ``older_than_seconds`` ago, with their attempts, oldest first.

        Returns how many were deleted, or None when another process is pruning right now
        (PostgreSQL: a transaction-scoped advisory lock, so only one does at a time).
        """
        finished = [DONE, FAILED, CANCELLED]
        with self._write() as conn:
            if not conn.execute(select(try_maintenance_lock())).scalar():
                return None
            # Locked (SKIP LOCKED), so an operator's retry of one of them waits or is skipped
            # rather than having its job deleted under it.
            ids = conn.execute(
                select(jobs.c.id)
                .where(
                    # Without statistics SQLite would pick the (state, id) index, read every
                    # finished job and sort them, on each prune, holding the write lock (about
                    # a second with a million finished jobs); by finish time it reads only
                    # the ones it deletes.
                    unindexed(jobs.c.state).in_(finished),
                    jobs.c.finished_at < seconds_from_now(-older_than_seconds),
                )
                .order_by(jobs.c.finished_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars().all()
            if not ids:
                return 0
            conn.execute(delete(attempts).where(attempts.c.job_id.in_(ids)))
            return conn.execute(
                delete(jobs).where(jobs.c.id.in_(ids), jobs.c.state.in_(finished))
            ).rowcount

    # -- monitoring -------------------------------------------------------------------------

    @_translate
    def stats(self, live_worker_seconds: float) -> Stats:
        with self._read() as conn:
            counts = conn.execute(
                select(jobs.c.queue, jobs.c.state, func.count()).group_by(
                    jobs.c.queue, jobs.c.state
                )
            ).all()
            oldest = conn.execute(
                select(func.min(jobs.c.run_at)).where(
                    jobs.c.state == PENDING, jobs.c.run_at <= db_now()
                )
            ).scalar()
            now = conn.execute(select(db_now())).scalar_one()
            finished = conn.execute(
                select(func.count()).where(jobs.c.finished_at >= seconds_from_now(-60))
            ).scalar_one()
            worker_rows = conn.execute(
                select(workers)
                .where(workers.c.last_heartbeat_at >= seconds_from_now(-live_worker_seconds))
                .order_by(workers.c.started_at)
            ).all()
        totals = {s.value: 0 for s in JobState}
        per_queue: dict[str, dict[str, int]] = {}
        for queue, state, n in counts:
            totals[state] = totals.get(state, 0) + n
            per_queue.setdefault(queue, {s.value: 0 for s in JobState})[state] = n
        return Stats(
            jobs=totals,
            queues=dict(sorted(per_queue.items())),
            workers=[
                WorkerInfo(
                    id=w.id, host=w.host, pid=w.pid, queues=tuple(w.queues),
                    started_at=w.started_at, last_heartbeat_at=w.last_heartbeat_at,
                )
                for w in worker_rows
            ],
            oldest_pending_age_seconds=(
                max((now - oldest).total_seconds(), 0.0) if oldest is not None else None
            ),
            finished_last_minute=finished,
        )

    # -- API keys and queue-scoped reads ----------------------------------------------------
    # Everything an API key needs: the keys themselves, and the reads of GET /jobs and
    # GET /stats limited to the queues a key covers.

    @staticmethod
    def _api_key(row: Any) -> ApiKey:
        m = row._mapping
        return ApiKey(
            id=m["id"],
            name=m["name"],
            prefix=m["prefix"],
            queues=tuple(m["queues"]),
            scopes=tuple(m["scopes"]),
            created_at=m["created_at"],
            revoked_at=m["revoked_at"],
            last_used_at=m["last_used_at"],
            secret_hash=m["secret_hash"],
        )

    @_translate
    def create_api_key(self, new: NewKey, prefix: str, secret_hash: str) -> ApiKey | None:
        """Store a key; None when ``prefix`` is taken already (the caller draws another)."""
        dialect_insert = pg_dialect.insert if self.dialect == "postgresql" else sqlite_dialect.insert
        stmt = (
            dialect_insert(api_keys)
            .values(
                name=new.name, prefix=prefix, secret_hash=secret_hash, queues=list(new.queues),
                scopes=list(new.scopes), created_at=db_now(),
            )
            .on_conflict_do_nothing(index_elements=[api_keys.c.prefix])
            .returning(*api_keys.c)
        )
        with self._write() as conn:
            row = conn.execute(stmt).first()
        return self._api_key(row) if row is not None else None

    @_translate
    def get_api_key(self, prefix: str) -> ApiKey | None:
        """The key with this prefix, revoked or not; None when there is none."""
        with self._read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.prefix == prefix)).first()
        return self._api_key(row) if row is not None else None

    @_translate
    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.id)).all()
        return [self._api_key(r) for r in rows]

    @_translate
    def has_active_api_keys(self) -> bool:
        with self._read() as conn:
            found = conn.execute(
                select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)
            ).first()
        return found is not None

    @_translate
    def revoke_api_key(self, prefix: str) -> ApiKey:
        """Mark the key revoked (from the database's now). Revoking it again changes nothing."""
        with self._write() as conn:
            row = conn.execute(
                update(api_keys)
                .where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=db_now())
                .returning(*api_keys.c)
            ).first()
            if row is None:
                row = conn.execute(select(api_keys).where(api_keys.c.prefix == prefix)).first()
        if row is None:
            raise KeyNotFound(prefix)
        return self._api_key(row)

    @_translate
    def touch_api_key(self, key_id: int, every_seconds: float = 60.0) -> None:
        """Record that the key was used; writes at most once per ``every_seconds``."""
        with self._write() as conn:
            conn.execute(
                update(api_keys)
                .where(
                    api_keys.c.id == key_id,
                    api_keys.c.revoked_at.is_(None),
                    (api_keys.c.last_used_at.is_(None))
                    | (api_keys.c.last_used_at < seconds_from_now(-every_seconds)),
                )
                .values(last_used_at=db_now())
            )

    @_translate
    def list_jobs_in_queues(
        self,
        queues: Sequence[str],
        *,
        state: JobState | None = None,
        task_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """As ``list_jobs``, of the jobs in any of ``queues`` only."""
        stmt = (
            select(jobs)
            .where(jobs.c.queue.in_(list(queues)))
            .order_by(jobs.c.id.desc())
            .limit(limit + 1)
        )
        if state is not None:
            stmt = stmt.where(jobs.c.state == JobState(state).value)
        if task_type is not None:
            stmt = stmt.where(jobs.c.task_type == task_type)
        if cursor is not None:
            stmt = stmt.where(jobs.c.id < decode_cursor(cursor))
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        items = [_job(r) for r in rows[:limit]]
        next_cursor = encode_cursor(items[-1].id) if len(rows) > limit and items else None
        return Page(items=items, next_cursor=next_cursor)

    @_translate
    def stats_in_queues(self, queues: Sequence[str], live_worker_seconds: float) -> Stats:
        """As ``stats``, of ``queues`` only: their jobs, and the live workers that serve one of
        them (each listed with those of its queues only)."""
        wanted = list(queues)
        in_queues = jobs.c.queue.in_(wanted)
        with self._read() as conn:
            counts = conn.execute(
                select(jobs.c.queue, jobs.c.state, func.count())
                .where(in_queues)
                .group_by(jobs.c.queue, jobs.c.state)
            ).all()
            oldest = conn.execute(
                select(func.min(jobs.c.run_at)).where(
                    in_queues, jobs.c.state == PENDING, jobs.c.run_at <= db_now()
                )
            ).scalar()
            now = conn.execute(select(db_now())).scalar_one()
            finished = conn.execute(
                select(func.count()).where(
                    in_queues, jobs.c.finished_at >= seconds_from_now(-60)
                )
            ).scalar_one()
            worker_rows = conn.execute(
                select(workers)
                .where(workers.c.last_heartbeat_at >= seconds_from_now(-live_worker_seconds))
                .order_by(workers.c.started_at)
            ).all()
        totals = {s.value: 0 for s in JobState}
        # Each of the caller's queues is listed, with zeros when it has no jobs.
        per_queue = {q: {s.value: 0 for s in JobState} for q in wanted}
        for queue, state, n in counts:
            totals[state] = totals.get(state, 0) + n
            per_queue[queue][state] = n
        live = []
        for w in worker_rows:
            # Workers' queue lists are JSON, so they are matched here rather than in SQL.
            shared = tuple(q for q in w.queues if q in wanted)
            if shared:
                live.append(WorkerInfo(
                    id=w.id, host=w.host, pid=w.pid, queues=shared,
                    started_at=w.started_at, last_heartbeat_at=w.last_heartbeat_at,
                ))
        return Stats(
            jobs=totals,
            queues=dict(sorted(per_queue.items())),
            workers=live,
            oldest_pending_age_seconds=(
                max((now - oldest).total_seconds(), 0.0) if oldest is not None else None
            ),
            finished_last_minute=finished,
        )

    # -- benchmarks -------------------------------------------------------------------------

    @_translate
    def backfill_finished(
        self, n: int, *, task_type: str = "noop", queue: str = "default"
    ) -> None:
        """Insert ``n`` jobs that finished in the past (``done`` after one attempt), 1 ms
        apart, with one set-based statement: generate_series on PostgreSQL, a recursive CTE
        on SQLite. For `jobq bench`, which measures a queue whose table holds many finished
        jobs; a million rows take seconds, not minutes. No attempt rows: the attempts table
        is only ever reached through its indexes (lease token, job id), and a row per job
        there would double the time (PostgreSQL checks the foreign key row by row)."""
        from sqlalchemy import Float, cast

        if n <= 0:
            return
        if self.dialect == "postgresql":
            series = func.generate_series(1, n).table_valued("i").render_derived(name="series")
            seq: Select[Any] = select(series.c.i)
            i = seq.selected_columns.i
        else:
            start = select(literal(1).label("i")).cte("series", recursive=True)
            series_cte = start.union_all(select(start.c.i + 1).where(start.c.i < n))
            seq = select(series_cte.c.i)
            i = series_cte.c.i
        ago = cast(n - i, Float) * -0.001  # the last one finished 1 ms before now
        rows = seq.with_only_columns(
            literal(task_type).label("task_type"),
            literal({"backfill": True}, jobs.c.payload.type).label("payload"),
            literal(queue).label("queue"),
            literal(0).label("priority"),
            literal(DONE).label("state"),
            literal(1).label("attempts"),
            literal(1).label("max_attempts"),
            seconds_from_now(ago - 0.002).label("run_at"),
            seconds_from_now(ago - 0.002).label("created_at"),
            seconds_from_now(ago - 0.001).label("started_at"),
            seconds_from_now(ago).label("finished_at"),
        )
        names = ["task_type", "payload", "queue", "priority", "state", "attempts",
                 "max_attempts", "run_at", "created_at", "started_at", "finished_at"]
        with self._write() as conn:
            conn.execute(insert(jobs).from_select(names, rows))
        if self.dialect == "postgresql":
            # What autovacuum would do after such an insert; the claim's plan depends on it.
            with self._write() as conn:
                conn.exec_driver_sql("ANALYZE jobq_jobs")
