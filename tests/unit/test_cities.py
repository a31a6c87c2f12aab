"""Cities: create, list, pause and activate, and the cache request handling reads."""

from __future__ import annotations

import re

import pytest

from downcity.cities import City, CityCache, CityStore, ms_to_iso
from downcity.errors import DowncityHTTPError
from downcity.store import Database, versions

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def store(db: Database) -> CityStore:
    return CityStore(db)


def test_ms_to_iso_is_utc_with_milliseconds() -> None:
    assert ms_to_iso(1714564800123) == "2024-05-01T12:00:00.123Z"


async def test_create_returns_an_active_city(store: CityStore) -> None:
    city = await store.create("Web app", city_id="web-app")
    assert (city.city_id, city.name, city.status) == ("web-app", "Web app", "active")
    assert ISO_MS.match(city.created_at)
    assert city.updated_at == city.created_at


async def test_create_without_an_id_generates_one(store: CityStore) -> None:
    city = await store.create("Extension")
    assert re.fullmatch(r"city_[0-9a-f]{16}", city.city_id)


async def test_get_returns_the_created_city(store: CityStore) -> None:
    created = await store.create("Web app", city_id="web-app")
    assert await store.get("web-app") == created


async def test_list_returns_cities_in_creation_order(store: CityStore) -> None:
    first = await store.create("First", city_id="zz-first")
    second = await store.create("Second", city_id="aa-second")
    assert await store.list() == [first, second]


async def test_duplicate_id_is_a_409_city_exists(store: CityStore) -> None:
    await store.create("Web app", city_id="web-app")
    with pytest.raises(DowncityHTTPError) as caught:
        await store.create("Again", city_id="web-app")
    assert (caught.value.status, caught.value.type, caught.value.field) == (409, "city_exists", "city_id")


@pytest.mark.parametrize("city_id", ["a", "Web", "-web", "_web", "web app", "w" * 64, ""])
async def test_invalid_id_is_a_422_naming_city_id(store: CityStore, city_id: str) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await store.create("Web app", city_id=city_id)
    assert (caught.value.status, caught.value.field) == (422, "city_id")


@pytest.mark.parametrize("name", ["", "   "])
async def test_empty_name_is_a_422_naming_name(store: CityStore, name: str) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await store.create(name, city_id="web-app")
    assert (caught.value.status, caught.value.field) == (422, "name")
    assert await store.list() == []


async def test_get_of_an_unknown_city_is_a_404(store: CityStore) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await store.get("nope")
    assert (caught.value.status, caught.value.type) == (404, "city_not_found")


async def test_pause_then_activate_changes_the_status(store: CityStore) -> None:
    await store.create("Web app", city_id="web-app")
    paused = await store.pause("web-app")
    assert paused.status == "paused"
    assert (await store.get("web-app")).status == "paused"
    assert (await store.activate("web-app")).status == "active"


async def test_pause_of_an_unknown_city_is_a_404(store: CityStore) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await store.pause("nope")
    assert caught.value.status == 404


async def test_every_change_bumps_the_cities_version(db: Database, store: CityStore) -> None:
    await store.create("Web app", city_id="web-app")
    await store.pause("web-app")
    await store.activate("web-app")
    async with db.connect() as conn:
        assert await versions.read(conn, "cities") == 3


async def test_cache_sees_a_paused_city_after_refresh(store: CityStore) -> None:
    await store.create("Web app", city_id="web-app")
    cache = CityCache(store)
    await cache.refresh()
    assert cache.status("web-app") == "active"
    await store.pause("web-app")
    assert await cache.refresh() is True
    assert cache.status("web-app") == "paused"


async def test_cache_knows_nothing_of_unknown_cities(store: CityStore) -> None:
    cache = CityCache(store)
    await cache.refresh()
    assert cache.status("nope") is None
    assert cache.get("nope") is None


async def test_cache_get_returns_the_city(store: CityStore) -> None:
    created = await store.create("Web app", city_id="web-app")
    cache = CityCache(store)
    await cache.refresh()
    assert cache.get("web-app") == created
    assert isinstance(cache.get("web-app"), City)
