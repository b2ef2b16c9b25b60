"""The trace context of a job's enqueuer.

One nullable column on ``jobq_jobs``: ``trace_context``, the W3C ``traceparent`` (and
``tracestate``) of the span that enqueued the job, or of a REST request's ``traceparent``
header, as JSON (``jobq.tracing``); the span of the job's run continues that trace. A nullable
column changes no constraint, so SQLite needs no rebuild of the table (ALTER TABLE ADD
COLUMN), and existing rows have no trace context.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 512: jobq.types.TRACE_CONTEXT_CHARS when this was written.
    op.add_column("jobq_jobs", sa.Column("trace_context", sa.String(512), nullable=True))


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place (no index or constraint names it).
    op.drop_column("jobq_jobs", "trace_context")
