"""Retention: when a study's spool files were removed.

Adds ``studies.spool_purged_at`` (set by the retention task when it removes a
study's spool files; the rows stay until ``retention.database_days``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spool_purged_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("spool_purged_at")
