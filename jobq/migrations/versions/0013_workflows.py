"""Workflows: the ``waiting`` state, the dependencies between jobs, completion callbacks.

``jobq_jobs`` gains five nullable columns (``parents_left``, ``on_final``,
``on_parent_failure``, ``cancelled_by``, ``callback_url``: plain ADD COLUMN on both
databases) and ``'waiting'`` in its state CHECK: PostgreSQL swaps the constraint in place,
SQLite rebuilds the table (``jobq.migrations.rebuild``; a second per million jobs). The new
``jobq_dependencies`` holds (child, parent) pairs. Existing jobs have no parents, dependents
or callback, so nothing about them changes. Downgrading refuses while a job waits (it would
have no state the old schema knows), and drops the dependencies.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobq.migrations.rebuild import rebuild_sqlite_table

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_BEFORE = "'pending', 'running', 'done', 'failed', 'cancelled'"
_AFTER = _BEFORE + ", 'waiting'"
_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_COLUMNS = ("parents_left", "on_final", "on_parent_failure", "cancelled_by", "callback_url")


def upgrade() -> None:
    op.add_column("jobq_jobs", sa.Column("parents_left", sa.Integer(), nullable=True))
    op.add_column("jobq_jobs", sa.Column("on_final", sa.Boolean(), nullable=True))
    op.add_column("jobq_jobs", sa.Column("on_parent_failure", sa.String(8), nullable=True))
    op.add_column("jobq_jobs", sa.Column("cancelled_by", _BIG, nullable=True))
    op.add_column("jobq_jobs", sa.Column("callback_url", sa.String(2000), nullable=True))
    _states(_BEFORE, _AFTER)
    op.create_table(
        "jobq_dependencies",
        sa.Column("child_id", _BIG, sa.ForeignKey("jobq_jobs.id", ondelete="CASCADE",
                  name=op.f("fk_jobq_dependencies_child_id_jobq_jobs")), nullable=False),
        sa.Column("parent_id", _BIG, sa.ForeignKey("jobq_jobs.id", ondelete="CASCADE",
                  name=op.f("fk_jobq_dependencies_parent_id_jobq_jobs")), nullable=False),
        sa.PrimaryKeyConstraint("child_id", "parent_id", name=op.f("pk_jobq_dependencies")),
    )
    op.create_index(op.f("ix_jobq_dependencies_parent_id"), "jobq_dependencies",
                    ["parent_id"])


def downgrade() -> None:
    waiting = op.get_bind().exec_driver_sql(
        "SELECT count(*) FROM jobq_jobs WHERE state = 'waiting'").scalar()
    if waiting:
        raise RuntimeError(f"{waiting} job(s) wait for their parents: cancel them (or let "
                           "them run) before downgrading below 0013")
    op.drop_index(op.f("ix_jobq_dependencies_parent_id"), table_name="jobq_dependencies")
    op.drop_table("jobq_dependencies")
    _states(_AFTER, _BEFORE)
    for name in reversed(_COLUMNS):
        op.drop_column("jobq_jobs", name)


def _states(old: str, new: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobq_jobs DROP CONSTRAINT ck_jobq_jobs_state, "
                   f"ADD CONSTRAINT ck_jobq_jobs_state CHECK (state IN ({new}))")
        return
    rebuild_sqlite_table("jobq_jobs", f"state IN ({old})", f"state IN ({new})")
