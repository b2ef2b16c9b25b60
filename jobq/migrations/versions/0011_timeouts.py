"""Timeouts: a job's own ``timeout_seconds``, and ``timeout`` as an attempt's outcome.

``jobq_jobs.timeout_seconds`` is nullable (NULL: its task's timeout, else the worker's
JOBQ_TIMEOUT_SECONDS), so on SQLite it is a plain ADD COLUMN. The outcome's CHECK constraint
on ``jobq_attempts`` gains ``'timeout'``: PostgreSQL swaps it in place; SQLite rebuilds the
attempts table (``jobq.migrations.rebuild``). Downgrading first turns the timed-out attempts
into errors, which is what they were before this revision, so no row breaks the old check.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobq.migrations.rebuild import rebuild_sqlite_table

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_BEFORE = "'running', 'done', 'error', 'lost', 'released', 'cancelled'"
_AFTER = _BEFORE + ", 'timeout'"


def upgrade() -> None:
    op.add_column("jobq_jobs", sa.Column("timeout_seconds", sa.Float(), nullable=True))
    _outcomes(_BEFORE, _AFTER)


def downgrade() -> None:
    op.execute("UPDATE jobq_attempts SET outcome = 'error' WHERE outcome = 'timeout'")
    _outcomes(_AFTER, _BEFORE)
    op.drop_column("jobq_jobs", "timeout_seconds")


def _outcomes(old: str, new: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobq_attempts DROP CONSTRAINT ck_jobq_attempts_outcome, "
                   f"ADD CONSTRAINT ck_jobq_attempts_outcome CHECK (outcome IN ({new}))")
        return
    rebuild_sqlite_table("jobq_attempts", f"outcome IN ({old})", f"outcome IN ({new})")
