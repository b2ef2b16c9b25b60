"""Idempotency keys are unique within their queue, no longer across all queues.

With one namespace over every queue, a producer allowed on one queue could take a key that
another queue's producer would use next (its job then refused as a conflict for as long as
the first job is kept) and learn, from the 409, that a key exists elsewhere. Every row that
was valid stays valid: keys unique over all queues are unique within each.

PostgreSQL swaps the constraint in place. SQLite cannot alter a constraint, so the table is
rebuilt the way SQLite documents: a new table from the old one's own CREATE statement with
the constraint changed, the rows copied with their ids, the old table dropped, the new one
renamed, the old indexes created again from their own statements, and the AUTOINCREMENT
counter kept, so that no id is ever handed out twice. (``migrate`` turns SQLite's foreign
keys off around the transaction, or the DROP would delete every attempt, and checks every
reference before it commits.) It copies every job once: about a second per million jobs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import re

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD = "CONSTRAINT uq_jobq_jobs_idempotency_key UNIQUE (idempotency_key)"
NEW = "CONSTRAINT uq_jobq_jobs_queue_idempotency_key UNIQUE (queue, idempotency_key)"


def upgrade() -> None:
    _swap(OLD, NEW)


def downgrade() -> None:
    # Refused (IntegrityError), and nothing changed, when two queues now hold the same key.
    _swap(NEW, OLD)


def _swap(old: str, new: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        drop = old.split()[1]
        op.execute(f"ALTER TABLE jobq_jobs DROP CONSTRAINT {drop}, ADD {new}")
        return
    conn = op.get_bind()
    if conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
        # The DROP below would delete every attempt (ON DELETE CASCADE).
        raise RuntimeError("run this migration through jobq.store.migrate, which turns "
                           "SQLite's foreign keys off around it")
    create = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobq_jobs'"
    ).scalar_one()
    if old not in create:
        raise RuntimeError(f"jobq_jobs is not as this migration expects: no {old!r}")
    indexes = [r[0] for r in conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobq_jobs' "
        "AND sql IS NOT NULL"  # the constraint's own index has none: it comes with the table
    )]
    counter = conn.exec_driver_sql(
        "SELECT seq FROM sqlite_sequence WHERE name = 'jobq_jobs'"
    ).scalar()
    # After a rename SQLite keeps the name quoted: CREATE TABLE "jobq_jobs".
    op.execute(re.sub(r'^CREATE TABLE\s+("?)jobq_jobs\1', "CREATE TABLE jobq_jobs_new", create)
               .replace(old, new))
    op.execute("INSERT INTO jobq_jobs_new SELECT * FROM jobq_jobs")
    op.execute("DROP TABLE jobq_jobs")
    op.execute("ALTER TABLE jobq_jobs_new RENAME TO jobq_jobs")
    for sql in indexes:
        op.execute(sql)
    if counter is not None:
        op.execute(f"UPDATE sqlite_sequence SET seq = {int(counter)} WHERE name = 'jobq_jobs'")
