"""Jobs, attempts and workers.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from jobq.store.tables import Timestamp

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# TEXT on SQLite: a column declared JSON there has NUMERIC affinity, which rewrites top-level
# numbers (3.0 -> 3, big integers rounded). See tables.JsonValue.
JSON = (
    sa.JSON(none_as_null=False)
    .with_variant(JSONB(none_as_null=False), "postgresql")
    .with_variant(sa.Text(), "sqlite")
)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STATES = "'pending', 'running', 'done', 'failed', 'cancelled'"
OUTCOMES = "'running', 'done', 'error', 'lost', 'released', 'cancelled'"


# Constraint names are wrapped in op.f(): env.py hands Alembic the metadata's naming convention,
# and "ck_%(table_name)s_%(constraint_name)s" would otherwise prefix these full names again
# (ck_jobq_jobs_ck_jobq_jobs_state), so the database would not match tables.py.


def upgrade() -> None:
    op.create_table(
        "jobq_jobs",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("task_type", sa.String(128), nullable=False),
        sa.Column("payload", JSON, nullable=True),
        sa.Column("queue", sa.String(128), nullable=False, server_default="default"),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("run_at", Timestamp, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", Timestamp, nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobq_jobs"),
        sa.UniqueConstraint("idempotency_key", name="uq_jobq_jobs_idempotency_key"),
        sa.CheckConstraint(f"state IN ({STATES})", name=op.f("ck_jobq_jobs_state")),
        sa.CheckConstraint(
            "attempts >= 0 AND attempts <= max_attempts", name=op.f("ck_jobq_jobs_attempts")
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_jobq_jobs_claim",
        "jobq_jobs",
        ["queue", sa.text("priority DESC"), "run_at", "id"],
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "ix_jobq_jobs_lease",
        "jobq_jobs",
        ["lease_expires_at"],
        postgresql_where=sa.text("state = 'running'"),
        sqlite_where=sa.text("state = 'running'"),
    )
    op.create_index("ix_jobq_jobs_state_id", "jobq_jobs", ["state", "id"])
    op.create_index("ix_jobq_jobs_finished_at", "jobq_jobs", ["finished_at"])

    op.create_table(
        "jobq_attempts",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("job_id", BIGID, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("lease_token", sa.String(64), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False, server_default="running"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("traceback", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobq_attempts"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobq_jobs.id"], ondelete="CASCADE",
            name="fk_jobq_attempts_job_id_jobq_jobs",
        ),
        sa.UniqueConstraint("lease_token", name="uq_jobq_attempts_lease_token"),
        sa.CheckConstraint(f"outcome IN ({OUTCOMES})", name=op.f("ck_jobq_attempts_outcome")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_jobq_attempts_job_id", "jobq_attempts", ["job_id"])

    op.create_table(
        "jobq_workers",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("queues", JSON, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("last_heartbeat_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobq_workers"),
    )


def downgrade() -> None:
    op.drop_table("jobq_workers")
    op.drop_index("ix_jobq_attempts_job_id", table_name="jobq_attempts")
    op.drop_table("jobq_attempts")
    op.drop_index("ix_jobq_jobs_finished_at", table_name="jobq_jobs")
    op.drop_index("ix_jobq_jobs_state_id", table_name="jobq_jobs")
    op.drop_index("ix_jobq_jobs_lease", table_name="jobq_jobs")
    op.drop_index("ix_jobq_jobs_claim", table_name="jobq_jobs")
    op.drop_table("jobq_jobs")
