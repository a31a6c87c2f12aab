"""Each city's quotas as an operator stored them (`/v1/quotas/set`), and the in-memory cache replicas read.

Stored quotas take effect without a redeploy: a change bumps the `quotas` version, and every replica's cache
reloads within about a second (as a city's pause does); the replica that made the change reloads at once.
"""

from __future__ import annotations

import builtins

from sqlalchemy import delete, select

from downcity.errors import invalid
from downcity.quotas.quota import Quota
from downcity.store import versions
from downcity.store.database import Database, now_ms
from downcity.store.schema import quotas

QUOTAS_VERSION = "quotas"


class QuotaStore:
    """Set, list and remove the quotas of a city."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, quota: Quota) -> Quota:
        """Store `quota` under (its city, its id), replacing one of the same id."""
        if quota.city_id is None:
            raise invalid("a stored quota belongs to one city: give city_id", "city_id")
        ms = now_ms()
        spec = quota.model_dump(mode="json")
        stmt = self.db.insert(quotas).values(
            city_id=quota.city_id, quota_id=quota.id, spec=spec, created_at_ms=ms, updated_at_ms=ms
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[quotas.c.city_id, quotas.c.quota_id], set_={"spec": spec, "updated_at_ms": ms}
        )
        async with self.db.begin() as conn:
            await conn.execute(stmt)
            await versions.bump(conn, QUOTAS_VERSION)
        return quota

    async def remove(self, city_id: str, quota_id: str) -> bool:
        """Remove one quota; False when the city had none of that id."""
        stmt = delete(quotas).where(quotas.c.city_id == city_id, quotas.c.quota_id == quota_id)
        async with self.db.begin() as conn:
            removed = (await conn.execute(stmt)).rowcount > 0
            if removed:
                await versions.bump(conn, QUOTAS_VERSION)
        return removed

    async def list(self, city_id: str | None = None) -> builtins.list[Quota]:
        """The stored quotas of one city, or of every city, by city then id."""
        stmt = select(quotas.c.spec).order_by(quotas.c.city_id, quotas.c.quota_id)
        if city_id is not None:
            stmt = stmt.where(quotas.c.city_id == city_id)
        async with self.db.connect() as conn:
            return [Quota.model_validate(row.spec) for row in (await conn.execute(stmt)).all()]


class QuotaCache(versions.VersionedCache):
    """Every stored quota in memory, by city, so admission matches them without a database round trip."""

    def __init__(self, store: QuotaStore) -> None:
        super().__init__(store.db, QUOTAS_VERSION)
        self._store = store
        self._by_city: dict[str, builtins.list[Quota]] = {}

    async def _reload(self) -> None:
        by_city: dict[str, builtins.list[Quota]] = {}
        for quota in await self._store.list():
            by_city.setdefault(quota.city_id or "", []).append(quota)
        self._by_city = by_city

    def of(self, city_id: str) -> builtins.list[Quota]:
        """The city's stored quotas."""
        return self._by_city.get(city_id, [])
