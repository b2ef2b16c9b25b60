"""Unique jobs: a key that one live job of a queue holds at a time.

Two nullable columns (``unique_key``, ``unique_for``) and two partial indexes: a unique one
over the live jobs (pending, running) that have a key, and a plain one over every job that
has one. Adding nullable columns and indexes changes no constraint, so SQLite needs no
rebuild of the table (ALTER TABLE ADD COLUMN), and existing rows, which have no key, enter
neither index.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LIVE = "unique_key IS NOT NULL AND state IN ('pending', 'running')"
KEYED = "unique_key IS NOT NULL"


def upgrade() -> None:
    op.add_column("jobq_jobs", sa.Column("unique_key", sa.String(255), nullable=True))
    op.add_column("jobq_jobs", sa.Column("unique_for", sa.Float(), nullable=True))
    op.create_index("ix_jobq_jobs_unique_live", "jobq_jobs", ["queue", "unique_key"],
                    unique=True, postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE))
    op.create_index("ix_jobq_jobs_unique_key", "jobq_jobs", ["queue", "unique_key"],
                    postgresql_where=sa.text(KEYED), sqlite_where=sa.text(KEYED))


def downgrade() -> None:
    op.drop_index("ix_jobq_jobs_unique_key", table_name="jobq_jobs")
    op.drop_index("ix_jobq_jobs_unique_live", table_name="jobq_jobs")
    # SQLite 3.35+ drops a column in place (no index or constraint names it any more).
    op.drop_column("jobq_jobs", "unique_for")
    op.drop_column("jobq_jobs", "unique_key")
