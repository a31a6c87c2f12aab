"""credit leases: a hold may belong to an ingress replica (its owner) as a block of an account's credit

Revision ID: 0005
Revises: 0004

A lease is a `holds` row whose `owner` names the replica that admits calls against it; per-call holds keep
`owner` NULL. An outboxed settle remembers the lease its call was admitted on. Leases expire and are swept
like every hold, so a crashed replica's leases free their credit.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=200), nullable=True))
    with op.batch_alter_table("settle_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("lease_hold_microcredits", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("settle_outbox", schema=None) as batch_op:
        batch_op.drop_column("lease_hold_microcredits")
        batch_op.drop_column("lease")
    # A lease left held becomes an ordinary hold, swept at its expiry.
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_column("owner")
