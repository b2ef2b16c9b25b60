"""Periodic jobs: the schedules that workers declare, and where each stands.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from jobq.store.tables import Timestamp

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# As in 0001: TEXT on SQLite, whose JSON columns have NUMERIC affinity.
JSON = (
    sa.JSON(none_as_null=False)
    .with_variant(JSONB(none_as_null=False), "postgresql")
    .with_variant(sa.Text(), "sqlite")
)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "jobq_schedules",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("task_type", sa.String(128), nullable=False),
        sa.Column("queue", sa.String(128), nullable=False),
        sa.Column("expression", sa.String(255), nullable=False),
        sa.Column("tz", sa.String(64), nullable=True),
        sa.Column("payload", JSON, nullable=True),
        sa.Column("catch_up", sa.Boolean(), nullable=False),
        sa.Column("grace_seconds", sa.Float(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("definition", sa.String(64), nullable=False),
        sa.Column("next_run_at", Timestamp, nullable=False),
        sa.Column("last_run_at", Timestamp, nullable=True),
        sa.Column("last_job_id", BIGID, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("declared_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_jobq_schedules")),
    )


def downgrade() -> None:
    op.drop_table("jobq_schedules")
