"""Unauthenticated routes: liveness, readiness and the token verification keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from downcity.http.deps import RuntimeDep
from downcity.readiness import report_body

router = APIRouter()


@router.get("/health")
async def health(runtime: RuntimeDep) -> dict[str, Any]:
    """Liveness plus what this replica serves."""
    return {"status": "ok", "federation": runtime.federation.name, "models": len(runtime.federation.models)}


@router.get("/ready")
async def ready(runtime: RuntimeDep) -> JSONResponse:
    """200 once every part of the system can serve (deployments, Ledger, JobManager, seeded keys), else 503."""
    report = await runtime.readiness.report()
    return JSONResponse(report_body(report), status_code=200 if report.ready else 503)


@router.get("/.well-known/jwks.json")
async def jwks(runtime: RuntimeDep) -> dict[str, Any]:
    """Public keys that verify user tokens (active and retired)."""
    return runtime.security.keyring.jwks()
