"""usage rows keep per-class token counts and costs; quotas stored per city and their durable windows

Revision ID: 0006
Revises: 0005

`cache_write_tokens` and one `<class>_picocredits` column per price class (exact costs in 10^-6 microcredit)
join `usage_records`; `quotas` holds the admin-set quotas of each city, `quota_windows` what each budget used in
each window.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_CLASSES = ("input", "cached_input", "cache_write", "output", "reasoning", "request", "image", "second")


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch_op:
        batch_op.add_column(sa.Column("cache_write_tokens", sa.Integer(), nullable=False, server_default="0"))
        for name in _CLASSES:
            batch_op.add_column(sa.Column(f"{name}_picocredits", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "quotas",
        sa.Column("city_id", sa.String(length=64), nullable=False),
        sa.Column("quota_id", sa.String(length=64), nullable=False),
        sa.Column("spec", _JSON, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("city_id", "quota_id"),
    )
    op.create_table(
        "quota_windows",
        sa.Column("bucket", sa.String(length=400), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("window_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("city_id", sa.String(length=64), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("window_end_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "metric", "window_start_ms"),
    )
    op.create_index("ix_quota_windows_city_end", "quota_windows", ["city_id", "window_end_ms"])


def downgrade() -> None:
    op.drop_index("ix_quota_windows_city_end", table_name="quota_windows")
    op.drop_table("quota_windows")
    op.drop_table("quotas")
    with op.batch_alter_table("usage_records") as batch_op:
        for name in reversed(_CLASSES):
            batch_op.drop_column(f"{name}_picocredits")
        batch_op.drop_column("cache_write_tokens")
