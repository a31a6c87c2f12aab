"""Migrations apply cleanly on empty PostgreSQL and SQLite and match the schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from downcity.store import Database
from downcity.store.schema import metadata

EXPECTED_TABLES = {
    "alembic_version",
    "async_jobs",
    "balances",
    "cities",
    "env",
    "holds",
    "idempotency_claims",
    "ledger_entries",
    "meta",
    "revoked_tokens",
    "settle_outbox",
    "signing_keys",
    "usage_records",
}


def _schema_diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


async def test_migrated_database_has_every_table(db: Database) -> None:
    async with db.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert tables == EXPECTED_TABLES


async def test_migration_matches_the_schema_module(db: Database) -> None:
    async with db.connect() as conn:
        diff = await conn.run_sync(_schema_diff)
    assert diff == []


async def test_migrating_twice_is_a_no_op(db: Database) -> None:
    await db.migrate()
    async with db.connect() as conn:
        diff = await conn.run_sync(_schema_diff)
    assert diff == []
