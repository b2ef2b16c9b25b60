"""Unique jobs, and queues that can be paused.

Unique jobs: a key that one live job of a queue holds at a time.

Two nullable columns (``unique_key``, ``unique_for``) and two partial indexes: a unique one
over the live jobs (pending, running) that have a key, and a plain one over every job that
has one. Adding nullable columns and indexes changes no constraint, so SQLite needs no
rebuild of the table (ALTER TABLE ADD COLUMN), and existing rows, which have no key, enter
neither index.

Paused queues: a table ``jobq_queues`` (name, paused, paused_at), a row per queue ever paused
or resumed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobq.store.tables import Timestamp

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
    op.create_table(
        "jobq_queues",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("paused_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_jobq_queues")),
    )


def downgrade() -> None:
    op.drop_table("jobq_queues")
    op.drop_index("ix_jobq_jobs_unique_key", table_name="jobq_jobs")
    op.drop_index("ix_jobq_jobs_unique_live", table_name="jobq_jobs")
    # SQLite 3.35+ drops a column in place (no index or constraint names it any more).
    op.drop_column("jobq_jobs", "unique_for")
    op.drop_column("jobq_jobs", "unique_key")
