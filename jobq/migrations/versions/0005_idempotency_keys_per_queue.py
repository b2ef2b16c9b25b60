"""Idempotency keys are unique within their queue, no longer across all queues.

With one namespace over every queue, a producer allowed on one queue could take a key that
another queue's producer would use next (its job then refused as a conflict for as long as
the first job is kept) and learn, from the 409, that a key exists elsewhere. Every row that
was valid stays valid: keys unique over all queues are unique within each.

PostgreSQL swaps the constraint in place. SQLite cannot alter a constraint, so the table is
rebuilt (``jobq.migrations.rebuild``): it copies every job once, about a second per million.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

from jobq.migrations.rebuild import rebuild_sqlite_table

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
    rebuild_sqlite_table("jobq_jobs", old, new)
