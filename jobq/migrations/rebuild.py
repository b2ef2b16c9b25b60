"""Change a constraint of a SQLite table, which SQLite cannot ALTER: rebuild the table.

The way SQLite documents: a new table from the old one's own CREATE statement with the
constraint's text replaced, the rows copied with their ids, the old table dropped, the new one
renamed, the old indexes created again from their own statements, and the AUTOINCREMENT
counter kept, so that no id is ever handed out twice. ``migrate`` turns SQLite's foreign keys
off around the transaction (or dropping ``jobq_jobs`` would delete every attempt) and checks
every reference before it commits. It copies every row once: about a second per million.
"""

from __future__ import annotations

import re

from alembic import op


def rebuild_sqlite_table(table: str, old: str, new: str) -> None:
    """Rebuild ``table`` with ``old`` (text of its CREATE statement) replaced by ``new``."""
    conn = op.get_bind()
    if conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("run this migration through jobq.store.migrate, which turns "
                           "SQLite's foreign keys off around it")
    create = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar_one()
    if old not in create:
        raise RuntimeError(f"{table} is not as this migration expects: no {old!r}")
    indexes = [r[0] for r in conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL", (table,)  # a constraint's own index has none: it comes back
    )]                                   # with the table
    counter = conn.exec_driver_sql(
        "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)
    ).scalar()
    # After a rename SQLite keeps the name quoted: CREATE TABLE "jobq_jobs".
    op.execute(re.sub(rf'^CREATE TABLE\s+("?){table}\1', f"CREATE TABLE {table}_new", create)
               .replace(old, new))
    op.execute(f"INSERT INTO {table}_new SELECT * FROM {table}")
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
    for sql in indexes:
        op.execute(sql)
    if counter is not None:
        op.execute(f"UPDATE sqlite_sequence SET seq = {int(counter)} WHERE name = '{table}'")
