"""One `Database` entry point for PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds, the unit of every stored timestamp."""
    return time.time_ns() // 1_000_000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """An async engine plus the dialect-specific pieces the stores need."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            # hide_parameters: a statement's parameters are user data (and key material); errors never print them.
            self.engine: AsyncEngine = create_async_engine(url, hide_parameters=True)
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        elif self.dialect == "postgresql":
            self.engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, hide_parameters=True)
        else:
            raise ValueError(f"unsupported database {self.dialect!r}: use postgresql+asyncpg or sqlite+aiosqlite")

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction, committed on success and rolled back on error."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads."""
        async with self.engine.connect() as conn:
            yield conn

    def insert(self, table: Table) -> Any:
        """A dialect insert that supports `on_conflict_do_nothing` / `on_conflict_do_update`."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    async def migrate(self) -> None:
        """Apply every Alembic migration up to head."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade_head)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _upgrade_head(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
