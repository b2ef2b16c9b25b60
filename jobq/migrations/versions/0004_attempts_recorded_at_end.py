"""Attempts are recorded when they end: the open rows go.

From this version a running attempt is the job's own lease (``store/attempt_log.py``); the
attempts table holds ended attempts only, each written once and never updated. Open rows that
an earlier version wrote at the claim are deleted: their jobs show them from the job row, and
the row written when each ends takes the outcome. (A row that an older worker still writes
during a rolling upgrade is updated in place by that write, keyed by its claim's token.)

On PostgreSQL the attempts' pages no longer need room for the update that closed an attempt
(migration 0003): the fillfactor goes back to the default for pages written from now on.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM jobq_attempts WHERE outcome = 'running'")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobq_attempts RESET (fillfactor)")


def downgrade() -> None:
    # The running attempts of an older version are rows: write them from the job rows.
    op.execute(
        "INSERT INTO jobq_attempts (job_id, attempt, worker_id, lease_token, started_at, "
        "outcome) SELECT id, attempts, worker_id, lease_token, started_at, 'running' "
        "FROM jobq_jobs WHERE state = 'running' AND lease_token IS NOT NULL"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobq_attempts SET (fillfactor = 70)")
