"""Change counters in the `meta` table, and the polling cache base that reloads only on change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

from sqlalchemy import BigInteger, Text, cast, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from downcity.store.database import Database, now_ms
from downcity.store.schema import meta

logger = logging.getLogger(__name__)

_NEVER_LOADED = -1


def _meta_key(name: str) -> str:
    return f"version:{name}"


async def bump(conn: AsyncConnection, name: str) -> int:
    """Increment the `name` counter atomically (one upsert) and return its new value."""
    insert = postgresql.insert(meta) if conn.dialect.name == "postgresql" else sqlite.insert(meta)
    stmt = (
        insert.values(key=_meta_key(name), value="1", updated_at_ms=now_ms())
        .on_conflict_do_update(
            index_elements=[meta.c.key],
            set_={
                "value": cast(cast(meta.c.value, BigInteger) + 1, Text),
                "updated_at_ms": now_ms(),
            },
        )
        .returning(meta.c.value)
    )
    return int((await conn.execute(stmt)).scalar_one())


async def read(conn: AsyncConnection, name: str) -> int:
    """The current value of the `name` counter, 0 when it was never bumped."""
    value = (await conn.execute(select(meta.c.value).where(meta.c.key == _meta_key(name)))).scalar()
    return int(value) if value is not None else 0


class VersionedCache(ABC):
    """An in-memory copy of some tables, reloaded only when their version counter changes."""

    def __init__(self, db: Database, version_name: str) -> None:
        self.db = db
        self._version_name = version_name
        self._version = _NEVER_LOADED
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def _reload(self) -> None:
        """Replace the cached copy with the current rows."""

    async def load(self) -> None:
        """Reload unconditionally."""
        async with self._lock:
            await self._reload_from(await self._read_version())

    async def refresh(self) -> bool:
        """Reload when the version changed since the last load; True when it reloaded."""
        async with self._lock:
            version = await self._read_version()
            if version == self._version:
                return False
            await self._reload_from(version)
            return True

    async def _read_version(self) -> int:
        async with self.db.connect() as conn:
            return await read(conn, self._version_name)

    async def _reload_from(self, version: int) -> None:
        # The version is read before the rows, so the rows are at least that new: a change
        # committed in between is picked up by the next refresh, never lost.
        await self._reload()
        self._version = version

    async def start(self, interval_s: float = 1.0) -> None:
        """Load now, then refresh every `interval_s` seconds in a background task."""
        if self._task is not None and not self._task.done():
            return
        await self.load()
        self._task = asyncio.create_task(self._poll(interval_s), name=f"refresh-{self._version_name}")

    async def stop(self) -> None:
        """Stop the background refresh task."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception as exc:
                # Only the type: a database error's text may echo statement parameters.
                logger.warning("refreshing %s cache failed: %s", self._version_name, type(exc).__name__)
