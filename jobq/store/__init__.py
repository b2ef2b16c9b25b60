"""Storage: the only package of jobq with SQL in it."""

from __future__ import annotations

from jobq.settings import Settings
from jobq.store.engine import make_engine
from jobq.store.migrate import migrate
from jobq.store.sql import SqlStore

__all__ = ["SqlStore", "open_store", "make_engine", "migrate"]


def open_store(settings: Settings, *, auto_migrate: bool | None = None) -> SqlStore:
    """Connect to the configured database and, unless turned off, bring its schema up to date."""
    engine = make_engine(settings)
    if settings.auto_migrate if auto_migrate is None else auto_migrate:
        migrate(engine)
    return SqlStore(engine)
