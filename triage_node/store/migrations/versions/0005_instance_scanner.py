"""The scanner of each instance: Manufacturer and Manufacturer's Model Name.

Adds ``instances.manufacturer`` and ``instances.model_name`` (from (0008,0070) and
(0008,1090), filled at receive; device facts, not patient data), so that the drift
watch can count each scanner's stream. Instances received before this revision
have neither (NULL): they count as an unknown scanner.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("manufacturer", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("model_name", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("model_name")
        batch_op.drop_column("manufacturer")
