"""Idempotency keys: a partial unique index over the jobs that have one.

The unique constraint on (queue, idempotency_key) indexed every job, keyed or not (a NULL
key is still an entry of the index), and the claim and the completion of a job are UPDATEs
that cannot be HOT (its state is indexed): each wrote one more entry there, for nothing.
A unique index ``WHERE idempotency_key IS NOT NULL`` enforces the same rule (NULLs were
distinct anyway) and leaves unkeyed jobs out. Measured on 2 cores, 2 workers of concurrency
200 draining 30,000 unkeyed jobs: 8-27 % more jobs/s over three interleaved rounds
(2026-12-07). PostgreSQL drops the constraint and builds the index; SQLite rebuilds the
table without the constraint (``jobq.migrations.rebuild``), then builds the index.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobq.migrations.rebuild import rebuild_sqlite_table

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_NAME = "uq_jobq_jobs_queue_idempotency_key"
_CONSTRAINT = f"CONSTRAINT {_NAME} UNIQUE (queue, idempotency_key),"
_NEXT = "CONSTRAINT ck_jobq_jobs_state CHECK"  # the constraint after it in SQLite's text
_KEYED = sa.text("idempotency_key IS NOT NULL")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(_NAME, "jobq_jobs", type_="unique")
    else:
        rebuild_sqlite_table("jobq_jobs", _CONSTRAINT, "")
    op.create_index(_NAME, "jobq_jobs", ["queue", "idempotency_key"], unique=True,
                    postgresql_where=_KEYED, sqlite_where=_KEYED)


def downgrade() -> None:
    op.drop_index(_NAME, table_name="jobq_jobs")
    if op.get_bind().dialect.name == "postgresql":
        op.create_unique_constraint(_NAME, "jobq_jobs", ["queue", "idempotency_key"])
    else:
        rebuild_sqlite_table("jobq_jobs", _NEXT, f"{_CONSTRAINT} {_NEXT}")
