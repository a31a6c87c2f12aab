"""accounts are per (city, user): ledger rows move from user ids to account ids

Revision ID: 0004
Revises: 0003

Before this revision one balance served a user id in every city. Each existing account becomes the account of
the one city its user called from (`<city_id>/<user_id>`, read from usage_records); a user seen in no city or
in several keeps their balance in the `legacy` space (`~legacy/<user_id>`), for the operator to move with a
debit and a credit (docs/operators/billing.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TABLES = ("balances", "holds", "ledger_entries", "settle_outbox")
_ACCOUNT = 265
_BEFORE = 200


def _account_of(table: str) -> str:
    cities = f"(SELECT {{}}(DISTINCT u.city_id) FROM usage_records u WHERE u.user_id = {table}.user_id)"
    return (
        f"CASE WHEN {cities.format('COUNT')} = 1 THEN {cities.format('MIN')} || '/' || {table}.user_id "
        f"ELSE '~legacy/' || {table}.user_id END"
    )


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column("user_id", type_=sa.String(length=_ACCOUNT), existing_type=sa.String(length=_BEFORE))
        op.execute(f"UPDATE {table} SET user_id = {_account_of(table)}")


def downgrade() -> None:
    find = "strpos" if op.get_bind().dialect.name == "postgresql" else "instr"
    for table in _TABLES:
        # Lossy by nature: one user's accounts in two cities would become one row again and clash.
        op.execute(f"UPDATE {table} SET user_id = substr(user_id, {find}(user_id, '/') + 1)")
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column("user_id", type_=sa.String(length=_BEFORE), existing_type=sa.String(length=_ACCOUNT))
