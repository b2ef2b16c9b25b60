"""Engines for both backends, with the connection settings each needs to be a safe queue."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from jobq.settings import Settings

#: Execution option that marks a connection's transactions as read-only (SQLite: BEGIN
#: DEFERRED, so reads do not queue behind the single writer).
READ_ONLY = "jobq_read_only"


def make_engine(settings: Settings) -> Engine:
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(settings)
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_timeout_seconds,
        # A restarted server leaves dead connections in the pool; test each one on checkout.
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": max(1, int(settings.db_timeout_seconds)),
            "application_name": "jobq",
        },
    )

    @event.listens_for(engine, "connect")
    def _utc_session(dbapi_conn: Any, _record: Any) -> None:
        # Timestamps then arrive in UTC and need no conversion (tables.Timestamp). Only how
        # they are shown changes; a session that somehow is not in UTC still reads right.
        with dbapi_conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
        dbapi_conn.commit()

    return engine


def _sqlite_engine(settings: Settings) -> Engine:
    engine = create_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_timeout_seconds,
        connect_args={"check_same_thread": False, "timeout": settings.db_timeout_seconds},
    )
    busy_ms = int(settings.db_timeout_seconds * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Hand transaction control to us: pysqlite's own BEGIN is deferred and issued lazily,
        # which lets two writers both read and then fail to upgrade their locks.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # WAL: readers never block the writer. FULL: a committed job survives power loss, not
        # only a killed process. busy_timeout: wait for the write lock instead of failing.
        # busy_timeout first: switching to WAL needs a lock that a migrating process may hold.
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front (BEGIN IMMEDIATE), so a claim's read of candidate
        # rows and its update are one atomic step with no lock upgrade that could deadlock.
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")

    return engine
