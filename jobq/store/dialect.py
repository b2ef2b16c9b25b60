"""The dialect seam: the only things that truly differ between PostgreSQL and SQLite.

Every concern module of the store writes its statements once, in SQLAlchemy Core, and asks
this protocol for what cannot be written once: how an engine is set up, how a batch travels
to the database, how a claim runs, and whether anyone is woken. ``postgres.py`` and
``sqlite.py`` implement it; "what differs on SQLite?" is answered by reading ``sqlite.py``.
Expressions whose text alone differs (the clock, tokens, locks) are compiled per dialect in
``exprs.py`` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Row, Select, Table
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.engine import URL, make_url

from jobq.errors import ConfigError
from jobq.settings import Settings
from jobq.types import Lease

#: An INSERT that knows ON CONFLICT DO NOTHING (both dialects' own insert constructs).
Insert = PgInsert | SqliteInsert


class Connections(Protocol):
    """What a dialect may ask of the store: its engine, its kinds of connection
    (``base.StoreBase``)."""

    engine: Engine

    def write(self) -> AbstractContextManager[Connection]: ...
    def read(self) -> AbstractContextManager[Connection]: ...
    def autocommit(self) -> AbstractContextManager[Connection]: ...
    def exists(self, query: Select[Any], params: dict[str, Any] | None = None) -> bool: ...


#: Runs a claim with its parameters and returns the claimed rows (``Dialect.claim_runner``).
ClaimRunner = Callable[[dict[str, Any]], Sequence[Row[Any]]]
#: Writes (lease, result) pairs as done and returns the tokens that took
#: (``Dialect.completion_runner``).
CompletionRunner = Callable[[Sequence[tuple[Lease, Any]]], set[str]]
#: Runs one write statement as its own transaction and returns its rows
#: (``Dialect.statement_runner``).
StatementRunner = Callable[[dict[str, Any]], Sequence[Any]]


class Dialect(Protocol):
    name: str
    #: One writer at a time (SQLite): an idle worker's empty claim or rescue must look before
    #: it takes the write lock, or a process frozen while holding it stalls all others.
    single_writer: bool

    def make_engine(self, settings: Settings) -> Engine:
        """An engine with what this database needs to be a safe queue."""

    def insert(self, table: Table) -> Insert:
        """An INSERT into ``table`` that supports ON CONFLICT DO NOTHING."""

    def any_of(self, col: Any, items: Iterable[Any], item_type: Any) -> Any:
        """``col IN items``, as a statement text that does not grow with the items where that
        matters (prepared statements)."""

    def enqueue_statement(self, lanes: bool = False) -> Any:
        """The INSERT of new jobs, given as ``enqueue_params``; a taken idempotency key is
        skipped. Returns (id, idempotency_key, run_at, created_at, queue) per inserted row.
        ``lanes``: it writes the concurrency key's columns too."""

    def enqueue_params(self, rows: list[dict[str, Any]], engine: Engine) -> Any:
        """The parameters of ``enqueue_statement`` for the jobs' values (``enqueue._values``)."""

    def claim_runner(self, db: Connections, probe: Select[Any], claim: Any) -> ClaimRunner:
        """How a claim runs on ``db``: ``claim`` (UPDATE … RETURNING) moves the jobs to
        running; ``probe`` finds whether anything is due at all."""

    def completion_runner(self, db: Connections) -> CompletionRunner:
        """How a batch of successes is written: running → done for each (lease, result)
        whose claim still holds, and the attempts of those that took recorded
        (``attempt_log``)."""

    def one_statement(self, db: Connections) -> AbstractContextManager[Connection]:
        """A connection for a write that is a single statement, which is atomic by itself."""

    def statement_runner(self, db: Connections, stmt: Any) -> StatementRunner:
        """How the write ``stmt``, a single statement, runs on ``db`` as its own transaction
        at the least cost per call: the lone enqueue's INSERT (its rows have the statement's
        column names as attributes)."""

    def wake(self, conn: Connection, queues: Iterable[str]) -> None:
        """Wake idle workers of ``queues`` when ``conn``'s transaction commits."""

    def listen(
        self, engine: Engine, queues: Collection[str], wake: Callable[[], None],
        settings: Settings,
    ) -> Coroutine[Any, Any, None] | None:
        """A coroutine calling ``wake`` when jobs of ``queues`` may be due, or None
        (``settings``: where to listen, behind a pooler)."""

    def finished(self, conn: Connection, ids: Iterable[int]) -> None:
        """Tell the waiters of jobs ``ids`` (``jobq.waits``) that they became final, when
        ``conn``'s transaction commits. (A batch of successes does it in its own statement.)"""

    def listen_final(
        self, engine: Engine, heard: Callable[[list[int] | None], None], settings: Settings,
    ) -> Coroutine[Any, Any, None] | None:
        """A coroutine calling ``heard(ids)`` when jobs ``ids`` may have become final,
        ``heard(None)`` when any may have; or None where nothing can be watched."""

    def lock_for_migration(self, conn: Connection) -> None:
        """Make concurrent migrations of this database wait for ``conn``'s transaction."""

    def unbounded(self, conn: Connection) -> None:
        """Lift the session's statement deadline for the rest of ``conn``'s transaction: for
        the few statements that may rightly run long (a migration, a bulk load)."""

    def rebuilding_tables(self, conn: Connection) -> AbstractContextManager[None]:
        """Around a migration's transaction on ``conn`` (entered before it begins): what lets
        a migration rebuild a table that others reference (SQLite), checked before commit
        with ``check_references``."""

    def check_references(self, conn: Connection) -> None:
        """Raise if a migration left a reference without its row."""

    def numbers(self, n: int) -> tuple[Select[Any], Any]:
        """A SELECT of the integers 1..n and its column (for set-based bulk inserts)."""

    def after_bulk_load(self, conn: Connection) -> None:
        """What the database should do after a large insert (statistics)."""

    def server_settings(self, conn: Connection) -> dict[str, Any]:
        """The server's settings that bound a benchmark's figures."""


def dialect_for(url: str | URL) -> Dialect:
    """The dialect of a database URL: the one place that asks which database it is."""
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        from jobq.store.postgres import Postgres

        return Postgres()
    if backend == "sqlite":
        from jobq.store.sqlite import Sqlite

        return Sqlite()
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")

