"""holds expire at expires_at_ms; charges record what their settle requested

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The expiry every hold had before this revision: 15 minutes from its creation.
_OLD_EXPIRY_MS = 15 * 60 * 1000
_HELD = sa.text("status = 'held'")


def upgrade() -> None:
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at_ms", sa.BigInteger(), nullable=True))
        batch_op.drop_index("ix_holds_status_created")
    op.execute(f"UPDATE holds SET expires_at_ms = created_at_ms + {_OLD_EXPIRY_MS} WHERE status = 'held'")
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.create_index(
            "ix_holds_held_expires", ["expires_at_ms"], unique=False, postgresql_where=_HELD, sqlite_where=_HELD
        )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_microcredits", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_column("requested_microcredits")
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index("ix_holds_held_expires")
        batch_op.create_index("ix_holds_status_created", ["status", "created_at_ms"], unique=False)
        batch_op.drop_column("expires_at_ms")
