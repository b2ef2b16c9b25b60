"""SQLite: one writer at a time, taken up front (BEGIN IMMEDIATE); batches as executemany;
idle workers woken by watching the file's commit counter (``watch_commits``).

Everything here is what ``dialect.Dialect`` asks for; the statements that are the same on
both databases live in the concern modules. SQLite is a library call away, so a statement
more costs little here, where on PostgreSQL it would cost a round trip.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Float,
    Row,
    Select,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import sqlite

from jobq.settings import Settings
from jobq.store.dialect import ClaimRunner, CompletionRunner, Connections, StatementRunner
from jobq.store.base import READ_ONLY, pool_options
from jobq.store.exprs import DONE_LEASE, db_now, held, in_state, seconds_from_now
from jobq.store.tables import KEYED, jobs
from jobq.types import JobState, Lease

PENDING, RUNNING, DONE = JobState.PENDING.value, JobState.RUNNING.value, JobState.DONE.value

#: One job's running → done, for executemany; ``mark_done`` has checked its token in the same
#: transaction (which holds the write lock), and the guard repeats that check.
_DONE_ONE = (
    update(jobs)
    .where(held(bindparam("b_token"), bindparam("b_id")))
    .values(
        state=DONE,
        result=bindparam("b_result", type_=jobs.c.result.type),
        finished_at=db_now(),
        **DONE_LEASE,
    )
)


def _use_wal(cur: Any, timeout: float) -> None:
    """Switch the file to WAL (it stays so: later connections only read that it is).

    The switch needs the file to itself, and SQLite may refuse it at once, without its busy
    handler, while other connections are opening the same file: seen with eight processes
    starting together. So it is tried again until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Sqlite:
    name = "sqlite"
    single_writer = True

    def make_engine(self, settings: Settings) -> Engine:
        engine = create_engine(
            settings.sqlalchemy_url,
            **pool_options(settings),
            connect_args={"check_same_thread": False, "timeout": settings.db_timeout_seconds},
        )
        busy_ms = int(settings.db_timeout_seconds * 1000)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Hand transaction control to us: pysqlite's own BEGIN is deferred and issued
            # lazily, which lets two writers both read and then fail to upgrade their locks.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # WAL: readers never block the writer. FULL: a committed job survives power loss,
            # not only a killed process. busy_timeout: wait for the write lock instead of
            # failing; first, as switching to WAL needs a lock a migrating process may hold.
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            _use_wal(cur, settings.db_timeout_seconds)
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Writers take the write lock up front (BEGIN IMMEDIATE), so a claim's read of
            # candidate rows and its update are one atomic step with no lock upgrade that
            # could deadlock. Read-only transactions do not queue behind the writer.
            read_only = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")

        return engine

    def insert(self, table: Table) -> sqlite.Insert:
        return sqlite.insert(table)

    def any_of(self, col: Any, items: Iterable[Any], item_type: Any) -> Any:
        return col.in_(list(items))  # re-parsing an IN of any length costs nothing here

    def enqueue_statement(self, lanes: bool = False) -> Any:
        """A list of parameter sets, which SQLAlchemy sends as multi-row VALUES
        ("insertmanyvalues"); their keys name the columns, so ``lanes`` changes nothing."""
        # The given time, else the database's now plus the delay (0: due now).
        run_at = func.coalesce(
            bindparam("at", type_=jobs.c.run_at.type),
            seconds_from_now(bindparam("delay", type_=Float())),
        )
        return (
            sqlite.insert(jobs)
            .values(state=PENDING, attempts=0, run_at=run_at, created_at=db_now())
            .on_conflict_do_nothing(index_elements=[jobs.c.queue, jobs.c.idempotency_key],
                                    index_where=KEYED)
            .returning(jobs.c.id, jobs.c.idempotency_key, jobs.c.run_at, jobs.c.created_at,
                       jobs.c.queue)
        )

    def enqueue_params(self, rows: list[dict[str, Any]], engine: Engine) -> Any:
        return rows

    def claim_runner(self, db: Connections, probe: Select[Any], claim: Any) -> ClaimRunner:
        def run(params: dict[str, Any]) -> Sequence[Row[Any]]:
            if not db.exists(probe, params):  # nothing due: no write lock taken
                return []
            with db.write() as conn:
                return conn.execute(claim, params).all()

        return run

    def completion_runner(self, db: Connections) -> CompletionRunner:
        def run(finished: Sequence[tuple[Lease, Any]]) -> set[str]:
            with db.write() as conn:
                return _mark_done(self, conn, finished)

        return run

    def one_statement(self, db: Connections) -> AbstractContextManager[Connection]:
        # A write transaction all the same: there are no round trips to save, and BEGIN
        # IMMEDIATE takes the write lock up front.
        return db.write()

    def statement_runner(self, db: Connections, stmt: Any) -> StatementRunner:
        def run(params: dict[str, Any]) -> Sequence[Any]:
            with db.write() as conn:
                return conn.execute(stmt, params).all()

        return run

    def wake(self, conn: Connection, queues: Iterable[str]) -> None:
        pass  # no notifications in SQLite: its workers watch the file's commits (listen)

    def listen(
        self, engine: Engine, queues: Collection[str], wake: Callable[[], None],
        settings: Settings,
    ) -> Coroutine[Any, Any, None] | None:
        path = engine.url.database
        if not path or path == ":memory:" or path.startswith("file:"):
            return None  # not a file other processes write to
        return watch_commits(path, wake)

    def finished(self, conn: Connection, ids: Iterable[int]) -> None:
        pass  # no notifications: waiters watch the file's commits (listen_final)

    def listen_final(
        self, engine: Engine, heard: Callable[[list[int] | None], None], settings: Settings,
    ) -> Coroutine[Any, Any, None] | None:
        # Any commit may have finished any job: every waiter looks again (jobq.waits spaces
        # those looks out).
        return self.listen(engine, (), lambda: heard(None), settings)

    def lock_for_migration(self, conn: Connection) -> None:
        pass  # the migration's transaction holds the only write lock (BEGIN IMMEDIATE)

    @contextmanager
    def rebuilding_tables(self, conn: Connection) -> Iterator[None]:
        # SQLite changes a constraint only by rebuilding the table (CREATE the new, copy,
        # DROP the old, RENAME), and with foreign keys on, that DROP deletes every row that
        # references the old table (the attempts: ON DELETE CASCADE). The pragma is a no-op
        # inside a transaction, so it is set on the driver's connection before the
        # migration's BEGIN, and set back after it (SQLite's documented procedure).
        driver = conn.connection.driver_connection
        driver.execute("PRAGMA foreign_keys=OFF")
        try:
            yield
        finally:
            driver.execute("PRAGMA foreign_keys=ON")

    def check_references(self, conn: Connection) -> None:
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"the migration left references without their rows: {broken[:5]}")

    def numbers(self, n: int) -> tuple[Select[Any], Any]:
        start = select(literal(1).label("i")).cte("series", recursive=True)
        series = start.union_all(select(start.c.i + 1).where(start.c.i < n))
        return select(series.c.i), series.c.i

    def unbounded(self, conn: Connection) -> None:
        pass  # no statement deadline to lift

    def after_bulk_load(self, conn: Connection) -> None:
        pass  # without statistics SQLite plans as before; nothing to refresh

    def server_settings(self, conn: Connection) -> dict[str, Any]:
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        return {
            "sqlite_version": conn.exec_driver_sql("select sqlite_version()").scalar(),
            "journal_mode": conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
            "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync),
            "busy_timeout_ms": conn.exec_driver_sql("PRAGMA busy_timeout").scalar(),
        }


def _mark_done(
    dialect: Sqlite, conn: Connection, finished: Sequence[tuple[Lease, Any]]
) -> set[str]:
    """running → done for each (lease, result) whose claim still holds, in the caller's write
    transaction: the tokens are checked with one SELECT, then one UPDATE per job (executemany:
    re-running a small statement costs SQLite nothing). The done row is the record of its
    successful attempt (``attempt_log``)."""
    held_now = {r.id: r for r in conn.execute(
        select(jobs.c.id, jobs.c.lease_token).where(
            jobs.c.id.in_([lease.job_id for lease, _ in finished]),
            in_state(RUNNING),
            jobs.c.on_final.is_(None),  # those take Leases._complete_followed
        )
    )}
    valid = [(lease, result) for lease, result in finished
             if lease.job_id in held_now and held_now[lease.job_id].lease_token == lease.token]
    if valid:
        conn.execute(_DONE_ONE, [
            {"b_id": lease.job_id, "b_token": lease.token, "b_result": result}
            for lease, result in valid
        ])
    return {lease.token for lease, _ in valid}



#: How often an idle SQLite worker looks whether anyone committed to the file.
WATCH_SECONDS = 0.01

log = logging.getLogger("jobq.store")


async def watch_commits(path: str, wake: Callable[[], None]) -> None:
    """SQLite's wake-up, until cancelled: ``wake`` whenever any other connection, of any
    process, has committed to the file since the last look.

    SQLite sends no notifications, but ``PRAGMA data_version`` changes on a connection when
    another one commits. In WAL mode it is read from the shared-memory index, without I/O or
    a lock: a few µs, so it can run every 10 ms on the event loop (about 0.3 % of a core). A wake-up is a hint, as
    on PostgreSQL: the fetcher then claims (a probe that finds nothing due costs a read), and
    its polling stays as the fallback. The worker's own commits wake it too, harmlessly.
    """
    con: sqlite3.Connection | None = None
    seen = None
    try:
        while True:
            try:
                if con is None:
                    con = sqlite3.connect(path, check_same_thread=False, timeout=0)
                version = con.execute("PRAGMA data_version").fetchone()[0]
                if seen is not None and version != seen:
                    wake()
                seen = version
            except sqlite3.Error as exc:  # busy, or the file went away: look again later
                log.debug("watching %s for commits: %s", path, exc)
                if con is not None:
                    con.close()
                con, seen = None, None
                wake()  # commits may have been missed meanwhile
                await asyncio.sleep(1.0)
            await asyncio.sleep(WATCH_SECONDS)
    finally:
        if con is not None:
            con.close()
