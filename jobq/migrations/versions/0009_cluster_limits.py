"""Limits across the cluster: per-queue concurrency and rate, per-key concurrency.

On ``jobq_queues``: ``concurrency`` (most running at once), ``rate`` and ``burst`` (job
starts per second, a token bucket whose state is ``tokens`` at ``tokens_at``). On
``jobq_jobs``: ``concurrency_key`` and ``concurrency_limit`` (most running at once with that
key). A partial index over running keyed jobs keeps a limited claim's count per key cheap,
and one over pending keyed jobs lets a worker find out whether any wait; neither holds an
unkeyed job, so they cost the ordinary claim nothing. (Running jobs per queue are counted
through the (state, id) index: the running set is small, a few per worker slot, and an index
over it would be one more write in every claim.)
Only nullable columns and indexes: SQLite adds them in place (ALTER TABLE ADD COLUMN).

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobq.store.tables import Timestamp

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None

RUNNING_KEYED = "state = 'running' AND concurrency_key IS NOT NULL"
PENDING_KEYED = "state = 'pending' AND concurrency_key IS NOT NULL"


def upgrade() -> None:
    op.add_column("jobq_queues", sa.Column("concurrency", sa.Integer(), nullable=True))
    op.add_column("jobq_queues", sa.Column("rate", sa.Float(), nullable=True))
    op.add_column("jobq_queues", sa.Column("burst", sa.Integer(), nullable=True))
    op.add_column("jobq_queues", sa.Column("tokens", sa.Float(), nullable=True))
    op.add_column("jobq_queues", sa.Column("tokens_at", Timestamp, nullable=True))
    op.add_column("jobq_jobs", sa.Column("concurrency_key", sa.String(255), nullable=True))
    op.add_column("jobq_jobs", sa.Column("concurrency_limit", sa.Integer(), nullable=True))
    op.create_index("ix_jobq_jobs_running_key", "jobq_jobs", ["concurrency_key"],
                    postgresql_where=sa.text(RUNNING_KEYED),
                    sqlite_where=sa.text(RUNNING_KEYED))
    op.create_index("ix_jobq_jobs_pending_keyed", "jobq_jobs", ["queue"],
                    postgresql_where=sa.text(PENDING_KEYED),
                    sqlite_where=sa.text(PENDING_KEYED))


def downgrade() -> None:
    op.drop_index("ix_jobq_jobs_pending_keyed", table_name="jobq_jobs")
    op.drop_index("ix_jobq_jobs_running_key", table_name="jobq_jobs")
    for column in ("concurrency_limit", "concurrency_key"):
        op.drop_column("jobq_jobs", column)
    for column in ("tokens_at", "tokens", "burst", "rate", "concurrency"):
        op.drop_column("jobq_queues", column)
