"""Storage: the only package of jobq with SQL in it."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from jobq.errors import ConfigError, StoreUnavailable
from jobq.settings import Settings
from jobq.store.engine import make_engine
from jobq.store.migrate import current_revision, head_revision, migrate
from jobq.store.sql import SqlStore

__all__ = ["SqlStore", "open_store", "make_engine", "migrate"]


def open_store(settings: Settings, *, auto_migrate: bool | None = None) -> SqlStore:
    """Connect to the configured database and, unless turned off, bring its schema up to date.

    With migrations off, a schema that is not current is a configuration error (run
    ``jobq migrate``) rather than a stream of "no such table" errors later.
    """
    engine = make_engine(settings)
    try:
        _check_schema(engine, settings.auto_migrate if auto_migrate is None else auto_migrate)
    except sa_exc.OperationalError as exc:
        engine.dispose()
        raise StoreUnavailable(f"cannot reach the database: {exc.orig}") from exc
    return SqlStore(engine)


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
