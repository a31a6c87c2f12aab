"""Admin job routes: image jobs across cities, by status, city and user."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from downcity.http.deps import AdminDep, RuntimeDep
from downcity.jobs.store import MAX_LIST_LIMIT, JobStore

router = APIRouter(prefix="/v1/jobs")

Status = Literal["queued", "running", "succeeded", "failed"]


@router.get("/list")
async def list_jobs(
    runtime: RuntimeDep,
    _: AdminDep,
    status: Status | None = None,
    city_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    user_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
) -> dict[str, Any]:
    """Image jobs matching every given filter, newest first."""
    records = await JobStore(runtime.db).list(status=status, city_id=city_id, user_id=user_id, limit=limit)
    return {"items": [record.to_admin() for record in records]}
