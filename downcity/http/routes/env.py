"""Admin routes for provider keys; values go in, only previews come out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from downcity.http.deps import AdminDep, RuntimeDep

router = APIRouter(prefix="/v1/env")


class EnvSet(BaseModel):
    """Body of `/v1/env/set`."""

    key: str = Field(min_length=1)
    value: str = Field(min_length=1)


class EnvRemove(BaseModel):
    """Body of `/v1/env/remove`."""

    key: str = Field(min_length=1)


@router.get("/list")
async def list_env(runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Keys with previews and update times, never values."""
    return {"items": [entry.model_dump() for entry in await runtime.env_store.list()]}


@router.post("/set")
async def set_env(body: EnvSet, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Set or rotate a provider key; every replica picks it up within ~1 s."""
    return (await runtime.env_store.set(body.key, body.value)).model_dump()


@router.post("/remove")
async def remove_env(body: EnvRemove, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Remove a stored key."""
    return {"removed": await runtime.env_store.remove(body.key)}
