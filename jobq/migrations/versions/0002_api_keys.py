"""API keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from jobq.store.tables import Timestamp

revision = "0002"
down_revision = "0001"
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
        "jobq_api_keys",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("queues", JSON, nullable=False),
        sa.Column("scopes", JSON, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("last_used_at", Timestamp, nullable=True),
        sa.Column("revoked_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobq_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_jobq_api_keys_prefix")),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("jobq_api_keys")
