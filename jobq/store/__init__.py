"""Storage: the only package of jobq with SQL in it.

``open_store(settings)`` picks the dialect once, from the URL, and returns a ``SqlStore``
composed of the concerns (enqueue, queries, leases, operator, maintenance, schedules,
api_keys, tooling); ``dialect.py`` is the seam, ``postgres.py`` and ``sqlite.py`` its two sides.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from jobq.errors import ConfigError, StoreUnavailable
from jobq.settings import Settings
from jobq.store.dialect import dialect_for
from jobq.store.migrate import current_revision, head_revision, migrate
from jobq.store.store import SqlStore

__all__ = ["SqlStore", "open_store", "make_engine", "migrate"]


def make_engine(settings: Settings) -> Engine:
    """An engine for the configured database, set up as its dialect needs."""
    return dialect_for(settings.sqlalchemy_url).make_engine(settings)


def open_store(settings: Settings, *, auto_migrate: bool | None = None) -> SqlStore:
    """Connect to the configured database and, unless turned off, bring its schema up to date.

    With migrations off, a schema that is not current is a configuration error (run
    ``jobq migrate``) rather than a stream of "no such table" errors later.
    """
    dialect = dialect_for(settings.sqlalchemy_url)
    engine = dialect.make_engine(settings)
    try:
        _check_schema(engine, settings.auto_migrate if auto_migrate is None else auto_migrate)
    except sa_exc.OperationalError as exc:
        engine.dispose()
        raise StoreUnavailable(f"cannot reach the database: {exc.orig}") from exc
    store = SqlStore(engine, dialect)
    store.settings = settings
    return store


def _check_schema(engine: Engine, auto_migrate: bool) -> None:
    if auto_migrate:
        migrate(engine)
    else:
        current, head = current_revision(engine), head_revision()
        if current != head:
            raise ConfigError(
                f"JOBQ_AUTO_MIGRATE is off and the database schema is at revision "
                f"{current or 'none'}, not {head}: run `jobq migrate` first"
            )
