"""Full text of items: content, its fetch status and retry time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def ts() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(sa.String(19), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("content", sa.Text))
        batch.add_column(sa.Column("content_status", sa.String(16)))
        batch.add_column(sa.Column("content_fetched_at", ts()))
        batch.add_column(sa.Column("content_error", sa.Text))
        batch.add_column(sa.Column("content_attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("content_next_at", ts()))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        for column in ("content_next_at", "content_attempts", "content_error", "content_fetched_at",
                       "content_status", "content"):
            batch.drop_column(column)
