"""Alembic environment. jobq runs migrations through ``jobq.store.migrate``, which passes an
open connection (already holding the migration lock) in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from jobq.store.tables import metadata

VERSION_TABLE = "jobq_alembic_version"


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    # Plain `alembic` CLI use: build the connection from jobq's settings.
    from jobq.settings import load_settings
    from jobq.store import make_engine

    engine = make_engine(load_settings())
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
else:
    _run(connection)
