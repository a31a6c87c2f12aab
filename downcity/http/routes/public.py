"""Unauthenticated routes: health and the token verification keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from downcity.http.deps import RuntimeDep

router = APIRouter()


@router.get("/health")
async def health(runtime: RuntimeDep) -> dict[str, Any]:
    """Liveness plus what this replica serves."""
    return {"status": "ok", "federation": runtime.federation.name, "models": len(runtime.federation.models)}


@router.get("/.well-known/jwks.json")
async def jwks(runtime: RuntimeDep) -> dict[str, Any]:
    """Public keys that verify user tokens (active and retired)."""
    return runtime.security.keyring.jwks()
