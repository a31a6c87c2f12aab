"""Migrations apply cleanly on empty PostgreSQL and SQLite and match the schema."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from downcity.store import Database
from downcity.store.database import MIGRATIONS_DIR
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
    "quota_windows",
    "quotas",
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


def _migrate_to(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    if revision in ("0001", "0003"):
        command.downgrade(config, revision)
    else:
        command.upgrade(config, revision)


async def test_revision_0002_gives_held_holds_their_old_expiry_and_resolved_ones_none(db: Database) -> None:
    async with db.begin() as conn:
        await conn.run_sync(_migrate_to, "0001")
        await conn.execute(
            text(
                "INSERT INTO holds (idempotency_key, user_id, amount_microcredits, status, created_at_ms, "
                "resolved_at_ms) VALUES ('held-1', 'alice', 100, 'held', 1000, NULL), "
                "('settled-1', 'alice', 100, 'settled', 2000, 3000)"
            )
        )
        await conn.run_sync(_migrate_to, "head")
    async with db.connect() as conn:
        rows = (await conn.execute(text("SELECT idempotency_key, expires_at_ms FROM holds ORDER BY 1"))).all()
        diff = await conn.run_sync(_schema_diff)
    assert [tuple(row) for row in rows] == [("held-1", 1000 + 15 * 60 * 1000), ("settled-1", None)]
    assert diff == []


async def test_revision_0004_moves_each_account_to_the_city_its_user_called_from(db: Database) -> None:
    async with db.begin() as conn:
        await conn.run_sync(_migrate_to, "0003")
        await conn.execute(
            text(
                "INSERT INTO balances (user_id, credits_microcredits, held_microcredits, updated_at_ms) "
                "VALUES ('alice', 100, 0, 1), ('bob', 200, 0, 1), ('carol', 300, 0, 1)"
            )
        )
        for user_id, city_id, request_id in (("alice", "web", "r1"), ("bob", "web", "r2"), ("bob", "ext", "r3")):
            await conn.execute(
                text(
                    "INSERT INTO usage_records (request_id, city_id, user_id, pathway, status, http_status, "
                    "input_tokens, output_tokens, cached_tokens, reasoning_tokens, duration_ms, "
                    "charge_microcredits, usage_source, created_at_ms) "
                    f"VALUES ('{request_id}', '{city_id}', '{user_id}', 'text', 'ok', 200, 0, 0, 0, 0, 0, 0, "
                    "'upstream', 1)"
                )
            )
        await conn.run_sync(_migrate_to, "head")
    async with db.connect() as conn:
        rows = (await conn.execute(text("SELECT user_id, credits_microcredits FROM balances ORDER BY 2"))).all()
    assert [tuple(row) for row in rows] == [("web/alice", 100), ("~legacy/bob", 200), ("~legacy/carol", 300)]
