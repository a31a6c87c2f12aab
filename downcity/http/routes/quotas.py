"""Admin routes for quotas: set, list and remove a city's quotas, and what each budget used in its window."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from downcity.http.deps import AdminDep, RuntimeDep
from downcity.quotas import Quota
from downcity.quotas.quota import QUOTA_ID_PATTERN

router = APIRouter(prefix="/v1/quotas")


class QuotaRef(BaseModel):
    """A body naming one stored quota."""

    city_id: str = Field(min_length=1, max_length=64)
    id: str = Field(pattern=QUOTA_ID_PATTERN)


class QuotaSet(Quota):
    """Body of `/v1/quotas/set`: a quota of one city."""

    city_id: str = Field(min_length=1, max_length=64)


@router.post("/set")
async def set_quota(body: QuotaSet, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Store a city's quota (replacing one of the same id): every replica applies it within ~1 s."""
    await runtime.cities.get(body.city_id)
    quota = await runtime.quota_store.set(Quota.model_validate(body.model_dump()))
    await runtime.quota_cache.refresh()
    return quota.model_dump()


@router.get("/list")
async def list_quotas(
    runtime: RuntimeDep,
    _: AdminDep,
    city_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> dict[str, Any]:
    """The Federation's declared quotas and the stored ones (of one city, or every city), with each budget's
    use in its current window when a city is named."""
    declared = [
        {**quota.model_dump(), "source": "federation"}
        for quota in runtime.federation.quotas
        if city_id is None or quota.city_id in (None, city_id)
    ]
    stored = [{**quota.model_dump(), "source": "city"} for quota in await runtime.quota_store.list(city_id)]
    consumption = await runtime.quotas.consumption(city_id) if city_id is not None else []
    return {"items": [*declared, *stored], "consumption": consumption}


@router.post("/remove")
async def remove_quota(body: QuotaRef, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Remove a city's stored quota; `removed` is false when it had none of that id."""
    removed = await runtime.quota_store.remove(body.city_id, body.id)
    await runtime.quota_cache.refresh()
    return {"removed": removed}
