"""The application's own connection, for an enqueue inside its transaction.

``q.enqueue(..., connection=c)`` writes the job with the application's connection, in the
transaction it has open, and commits nothing: the job exists if and only if that transaction
commits. On PostgreSQL the wake-up (NOTIFY) is transactional too, so workers wake at its
commit and never for a rollback; on SQLite they see the commit through ``PRAGMA data_version``.

Accepted: a SQLAlchemy ``Connection``, a SQLAlchemy ORM ``Session`` (its connection for the
default bind, in the session's transaction), a psycopg 3 connection, and a ``sqlite3``
connection. A raw DB-API connection is lent, for the call, to an engine of jobq's (one per
database kind, made once) whose dialect never commits, rolls back, closes or configures a
connection: the transaction and the connection stay the application's, whatever happens to
the wrapper.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.pool import NullPool

from jobq.errors import ConfigError


class _Borrowed:
    """A dialect for a connection that is not ours: its owner ends its transaction, closes
    it, and has set it up as it likes (no notice handler or SQL function of ours added)."""

    def do_commit(self, dbapi_connection: Any) -> None:
        pass

    def do_rollback(self, dbapi_connection: Any) -> None:
        pass

    def do_close(self, dbapi_connection: Any) -> None:
        pass

    def on_connect(self) -> None:
        return None


class BorrowedPostgres(_Borrowed, PGDialect_psycopg):
    supports_statement_cache = True  # compiles as its parent does


class BorrowedSqlite(_Borrowed, SQLiteDialect_pysqlite):
    supports_statement_cache = True


registry.register("postgresql.jobq_borrowed", __name__, "BorrowedPostgres")
registry.register("sqlite.jobq_borrowed", __name__, "BorrowedSqlite")

#: The raw connection lent to the engine for this call (``their_connection``).
_lent: ContextVar[Any] = ContextVar("jobq_lent_connection")


@functools.cache
def _engine(url: str) -> Engine:
    # NullPool: each checkout asks the creator, which hands out the connection lent for this
    # call; "closing" it on checkin is do_close, which does nothing. The engine's first
    # checkout asks the server its version and settings, once per process.
    return create_engine(url, creator=lambda: _lent.get(), poolclass=NullPool)


@contextmanager
def their_connection(given: Any, dialect_name: str) -> Iterator[Connection]:
    """``given`` (see the module's docstring) as a SQLAlchemy Connection in its own
    transaction. Raises ConfigError for anything else, for a connection of the other
    database, and for one in autocommit mode (there is no transaction to write in)."""
    conn = _sqlalchemy(given)
    if conn is not None:
        _check(conn.dialect.name, dialect_name, given)
        yield conn
        return
    engine = _engine(_url_for(given, dialect_name))
    token = _lent.set(given)
    try:
        with engine.connect() as wrapper:  # its close ends nothing (_Borrowed)
            yield wrapper
    finally:
        _lent.reset(token)


def _sqlalchemy(given: Any) -> Connection | None:
    if isinstance(given, Connection):
        return given
    try:
        from sqlalchemy.orm import Session
    except ImportError:  # pragma: no cover - the ORM ships with SQLAlchemy
        return None
    if isinstance(given, Session):
        return given.connection()
    return None


def _url_for(raw: Any, dialect_name: str) -> str:
    """The URL of jobq's engine for connections like ``raw``, once ``raw`` was checked."""
    if isinstance(raw, psycopg.Connection):
        _check("postgresql", dialect_name, raw)
        if raw.closed:
            raise ConfigError("connection=: the psycopg connection is closed")
        if raw.autocommit and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            raise ConfigError("connection=: the psycopg connection is in autocommit mode with "
                              "no transaction open (conn.transaction()), so there is no "
                              "transaction to enqueue in")
        url = "postgresql+jobq_borrowed://"
    elif isinstance(raw, sqlite3.Connection):
        _check("sqlite", dialect_name, raw)
        if raw.isolation_level is None and not raw.in_transaction:
            raise ConfigError("connection=: the sqlite3 connection is in autocommit mode "
                              "(isolation_level None) with no transaction open: BEGIN first")
        url = "sqlite+jobq_borrowed://"
    else:
        raise ConfigError(
            "connection= takes a SQLAlchemy Connection or Session, a psycopg connection or a "
            f"sqlite3 connection, not {type(raw).__module__}.{type(raw).__name__}")
    return url


def _check(theirs: str, ours: str, given: Any) -> None:
    if theirs != ours:
        raise ConfigError(f"connection=: a {theirs} connection ({type(given).__name__}), but "
                          f"jobq's database is {ours}: the job must go to jobq's database")
