"""Cities: product boundaries that are `active` or `paused`, and their in-memory cache."""

from __future__ import annotations

import builtins
import os
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from downcity.errors import DowncityHTTPError, invalid
from downcity.store import versions
from downcity.store.database import Database, now_ms
from downcity.store.schema import cities

CITIES_VERSION = "cities"
CITY_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{1,62}$")
MAX_NAME_CHARS = 200

CityStatus = Literal["active", "paused"]


def ms_to_iso(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with millisecond precision, e.g. `2024-05-01T12:00:00.000Z`."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC).replace(microsecond=(ms % 1000) * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class City(BaseModel):
    """A product boundary as the API shows it."""

    model_config = ConfigDict(frozen=True)

    city_id: str
    name: str
    status: CityStatus
    created_at: str
    updated_at: str


def city_not_found(city_id: str) -> DowncityHTTPError:
    """404 for a city id that does not exist."""
    return DowncityHTTPError(404, "city_not_found", f"city {city_id!r} does not exist", "city_id")


def _city(row: Any) -> City:
    return City(
        city_id=row.city_id,
        name=row.name,
        status=row.status,
        created_at=ms_to_iso(row.created_at_ms),
        updated_at=ms_to_iso(row.updated_at_ms),
    )


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise invalid("name must be a non-empty string", "name")
    if len(name) > MAX_NAME_CHARS:
        raise invalid(f"name must be at most {MAX_NAME_CHARS} characters", "name")
    return name.strip()


def _check_city_id(city_id: object) -> str:
    if not isinstance(city_id, str) or not CITY_ID_PATTERN.fullmatch(city_id):
        raise invalid("city_id must match ^[a-z0-9][a-z0-9_-]{1,62}$", "city_id")
    return city_id


async def _select_city(conn: AsyncConnection, city_id: str) -> City:
    row = (await conn.execute(select(cities).where(cities.c.city_id == city_id))).first()
    if row is None:
        raise city_not_found(city_id)
    return _city(row)


class CityStore:
    """Create, list, pause and activate cities."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str, city_id: str | None = None) -> City:
        """Create an active city; `city_id` defaults to a generated `city_<hex>`."""
        name = _check_name(name)
        city_id = _check_city_id(city_id) if city_id is not None else f"city_{os.urandom(8).hex()}"
        ms = now_ms()
        stmt = self.db.insert(cities).values(
            city_id=city_id, name=name, status="active", created_at_ms=ms, updated_at_ms=ms
        )
        async with self.db.begin() as conn:
            result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=[cities.c.city_id]))
            if result.rowcount == 0:
                raise DowncityHTTPError(409, "city_exists", f"city {city_id!r} already exists", "city_id")
            await versions.bump(conn, CITIES_VERSION)
        return City(city_id=city_id, name=name, status="active", created_at=ms_to_iso(ms), updated_at=ms_to_iso(ms))

    async def get(self, city_id: str) -> City:
        """The city, or 404."""
        async with self.db.connect() as conn:
            return await _select_city(conn, city_id)

    async def pause(self, city_id: str) -> City:
        """Refuse the city's calls from now on."""
        return await self._set_status(city_id, "paused")

    async def activate(self, city_id: str) -> City:
        """Serve the city's calls again."""
        return await self._set_status(city_id, "active")

    async def _set_status(self, city_id: str, status: CityStatus) -> City:
        stmt = update(cities).where(cities.c.city_id == city_id).values(status=status, updated_at_ms=now_ms())
        async with self.db.begin() as conn:
            if (await conn.execute(stmt)).rowcount == 0:
                raise city_not_found(city_id)
            await versions.bump(conn, CITIES_VERSION)
            return await _select_city(conn, city_id)

    async def list(self) -> builtins.list[City]:
        """Every city, oldest first."""
        stmt = select(cities).order_by(cities.c.created_at_ms, cities.c.city_id)
        async with self.db.connect() as conn:
            return [_city(row) for row in (await conn.execute(stmt)).all()]


class CityCache(versions.VersionedCache):
    """Every city in memory, so request handling checks status without a database round trip."""

    def __init__(self, store: CityStore) -> None:
        super().__init__(store.db, CITIES_VERSION)
        self._store = store
        self._cities: dict[str, City] = {}

    async def _reload(self) -> None:
        self._cities = {city.city_id: city for city in await self._store.list()}

    def get(self, city_id: str) -> City | None:
        """The cached city, or None."""
        return self._cities.get(city_id)

    def status(self, city_id: str) -> str | None:
        """`active` or `paused` from the cache, or None for an unknown city."""
        city = self._cities.get(city_id)
        return city.status if city is not None else None
