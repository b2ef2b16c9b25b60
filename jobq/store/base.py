"""What every concern of the store stands on: the engine and its dialect, three kinds of
connection, and the translation of driver errors into our own."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, Select
from sqlalchemy import exc as sa_exc

from jobq.errors import StoreUnavailable
from jobq.settings import Settings
from jobq.store.dialect import Dialect, dialect_for

P = ParamSpec("P")
R = TypeVar("R")

#: PostgreSQL's SQLSTATE for a statement cancelled (statement_timeout, or by an operator):
#: still "not available now" to the caller (a 503, a retry), but said as what it is.
QUERY_CANCELED = "57014"

#: Execution option that marks a connection's transactions as read-only (SQLite: BEGIN
#: DEFERRED, so reads do not queue behind the single writer).
READ_ONLY = "jobq_read_only"


def pool_options(settings: Settings) -> dict[str, Any]:
    """The connection pool of either database: its size, and how long a caller waits for a
    free connection before the store says it is unavailable."""
    return {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_timeout_seconds,
    }


def translate(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn driver errors that mean "the database is not available now" into StoreUnavailable."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sa_exc.TimeoutError as exc:  # pool exhausted
            raise StoreUnavailable(f"no database connection free: {exc}") from exc
        except sa_exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) == QUERY_CANCELED:
                raise StoreUnavailable(
                    "the statement ran past JOBQ_DB_STATEMENT_TIMEOUT_SECONDS (or was "
                    f"cancelled): {exc.orig}") from exc
            raise StoreUnavailable(f"database unavailable: {exc.orig}") from exc
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(f"database connection lost: {exc.orig}") from exc
            raise

    return wrapper


class StoreBase:
    """The engine, its dialect, and the connections the concerns take from it."""

    def __init__(self, engine: Engine, dialect: Dialect | None = None) -> None:
        self.engine = engine
        self.dialect = dialect or dialect_for(engine.url)
        #: The settings it was opened with (``open_store``): what a job's end needs to
        #: enqueue its webhook (``store/workflows.py``). None for a bare SqlStore(engine).
        self.settings: Settings | None = None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection on which each statement is its own transaction: for a write that is
        one statement, it saves the BEGIN and COMMIT round trips (PostgreSQL)."""
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    def exists(self, query: Select[Any], params: dict[str, Any] | None = None) -> bool:
        """Whether ``query`` finds anything, read in a read-only transaction (a single
        writer looks before it takes the write lock; SQLite renders no FOR UPDATE)."""
        with self.read() as conn:
            return conn.execute(query, params).first() is not None
