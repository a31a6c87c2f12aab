"""Usage routes: admin listing and totals across cities, and each user's own records."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from downcity.http.deps import AdminDep, CallerDep, RuntimeDep
from downcity.ledger.usage import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    GroupBy,
    UsageFilter,
    UsageStatus,
    list_usage,
    parse_time,
    summarize_usage,
)
from downcity.store.database import now_ms

router = APIRouter(prefix="/v1/usage")

Id = Annotated[str | None, Query(min_length=1, max_length=200)]
Time = Annotated[
    str | None,
    Query(min_length=1, max_length=40, description="epoch ms, ISO-8601 date or time (UTC if naive), or e.g. 24h, 7d"),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def _time(value: str | None, field: str) -> int | None:
    return parse_time(value, field, now_ms()) if value is not None else None


# Async, like every dependency here: FastAPI would run a plain function on its thread pool.
async def _filters(
    city_id: Id = None,
    user_id: Id = None,
    model: Id = None,
    status: UsageStatus | None = None,
    since: Time = None,
    until: Time = None,
) -> UsageFilter:
    return UsageFilter(
        city_id=city_id,
        user_id=user_id,
        model=model,
        status=status,
        since_ms=_time(since, "since"),
        until_ms=_time(until, "until"),
    )


async def _own_filters(
    caller: CallerDep,
    model: Id = None,
    status: UsageStatus | None = None,
    since: Time = None,
    until: Time = None,
) -> UsageFilter:
    return await _filters(caller.city_id, caller.user_id, model, status, since, until)


FilterDep = Annotated[UsageFilter, Depends(_filters)]
OwnFilterDep = Annotated[UsageFilter, Depends(_own_filters)]


@router.get("/list")
async def list_records(
    _: AdminDep, runtime: RuntimeDep, usage_filter: FilterDep, limit: Limit = DEFAULT_LIMIT
) -> dict[str, Any]:
    """Usage records matching every given filter, newest first."""
    records = await list_usage(runtime.db, usage_filter, limit)
    return {"items": [record.model_dump() for record in records]}


@router.get("/summary")
async def summary(
    _: AdminDep,
    runtime: RuntimeDep,
    usage_filter: FilterDep,
    group_by: GroupBy = "model",
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Requests, errors, tokens and credits per city, user, model or UTC day."""
    rows = await summarize_usage(runtime.db, usage_filter, group_by, limit)
    return {"group_by": group_by, "items": [row.model_dump() for row in rows]}


@router.get("/me")
async def my_usage(runtime: RuntimeDep, usage_filter: OwnFilterDep, limit: Limit = DEFAULT_LIMIT) -> dict[str, Any]:
    """The caller's own records in the token's city, newest first."""
    records = await list_usage(runtime.db, usage_filter, limit)
    return {"items": [record.model_dump() for record in records]}
