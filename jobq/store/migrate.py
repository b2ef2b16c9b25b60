"""Apply Alembic migrations under a lock, so that many processes starting at once migrate once."""

from __future__ import annotations

import logging
from collections.abc import Callable

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from jobq.store.dialect import dialect_for


log = logging.getLogger("jobq.migrate")

VERSION_TABLE = "jobq_alembic_version"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "jobq:migrations")
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to the newest revision (or to ``revision``, for tests).

    The whole upgrade runs in one transaction that first takes the lock: PostgreSQL's advisory
    transaction lock (``exprs.MIGRATION_LOCK``), SQLite's write lock (BEGIN IMMEDIATE, see
    sqlite.py). Latecomers wait, then find the schema current and do nothing.
    """
    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` ("base": nothing), the same way."""
    _run(engine, command.downgrade, revision)


def _run(engine: Engine, step: Callable[[Config, str], None], revision: str) -> None:
    cfg = _config()
    dialect = dialect_for(engine.url)
    with engine.connect() as conn, dialect.rebuilding_tables(conn), conn.begin():
        # A migration may rewrite a large table, and a latecomer waits for the first one to
        # finish: neither is bounded by the session's statement deadline.
        dialect.unbounded(conn)
        dialect.lock_for_migration(conn)
        cfg.attributes["connection"] = conn
        step(cfg, revision)
        dialect.check_references(conn)
