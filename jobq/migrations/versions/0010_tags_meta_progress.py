"""Tags, metadata and progress of jobs.

Five nullable columns on ``jobq_jobs``: ``tags`` (a JSON array of names) and ``meta`` (a JSON
object), given at enqueue; ``progress`` (0..1), ``progress_message`` and ``progress_at``,
written by the lease holder. Nullable columns change no constraint, so SQLite needs no rebuild
of the table (ALTER TABLE ADD COLUMN), and existing rows have no tags, meta or progress.

On PostgreSQL a partial GIN index over the tagged jobs serves ``GET /jobs?tag=``; SQLite has
no index for a JSON array's elements (see ``tables.py``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobq.store.tables import JsonOrNull, Timestamp
from jobq.types import PROGRESS_MESSAGE_CHARS

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_COLUMNS = ("tags", "meta", "progress", "progress_message", "progress_at")


def upgrade() -> None:
    op.add_column("jobq_jobs", sa.Column("tags", JsonOrNull, nullable=True))
    op.add_column("jobq_jobs", sa.Column("meta", JsonOrNull, nullable=True))
    op.add_column("jobq_jobs", sa.Column("progress", sa.Float(), nullable=True))
    op.add_column("jobq_jobs", sa.Column("progress_message", sa.String(PROGRESS_MESSAGE_CHARS),
                                         nullable=True))
    op.add_column("jobq_jobs", sa.Column("progress_at", Timestamp, nullable=True))
    if op.get_context().dialect.name == "postgresql":
        op.create_index("ix_jobq_jobs_tags", "jobq_jobs", ["tags"], postgresql_using="gin",
                        postgresql_ops={"tags": "jsonb_path_ops"},
                        postgresql_where=sa.text("tags IS NOT NULL"))


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.drop_index("ix_jobq_jobs_tags", table_name="jobq_jobs")
    # SQLite 3.35+ drops a column in place (no index or constraint names it).
    for name in reversed(_COLUMNS):
        op.drop_column("jobq_jobs", name)
