"""usage rows record a call's upstream attempts and the name of the key that served it

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))
        batch_op.add_column(sa.Column("key_name", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch_op:
        batch_op.drop_column("key_name")
        batch_op.drop_column("attempts")
