"""Admin routes for cities (product boundaries)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from downcity.http.deps import AdminDep, RuntimeDep

router = APIRouter(prefix="/v1/cities")


class CityCreate(BaseModel):
    """Body of `/v1/cities/create`."""

    name: str = Field(min_length=1, max_length=200)
    city_id: str | None = None


class CityRef(BaseModel):
    """A body naming one city."""

    city_id: str = Field(min_length=1)


@router.post("/create")
async def create_city(body: CityCreate, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Create an active city."""
    return (await runtime.cities.create(body.name, body.city_id)).model_dump()


@router.get("/list")
async def list_cities(runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Every city."""
    return {"items": [city.model_dump() for city in await runtime.cities.list()]}


@router.post("/pause")
async def pause_city(body: CityRef, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Pause a city: refused at once on this replica, on every other within ~1 s."""
    city = await runtime.cities.pause(body.city_id)
    await runtime.city_cache.refresh()
    return city.model_dump()


@router.post("/activate")
async def activate_city(body: CityRef, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Activate a paused city: served at once on this replica, on every other within ~1 s."""
    city = await runtime.cities.activate(body.city_id)
    await runtime.city_cache.refresh()
    return city.model_dump()
