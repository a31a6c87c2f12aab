"""The Ingress Serve deployment: the FastAPI app from `downcity.http` over a Ray-backed runtime."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.gateway import RayGateway
from actors.ledger import get_ledger
from downcity.http.app import create_app
from downcity.runtime import Runtime, load_federation
from downcity.settings import Settings

INGRESS_MAX_ONGOING_REQUESTS = 1024


@serve.deployment(max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    """Auth, city checks, model resolution, hooks and billing; provider work goes to provider deployments."""

    # Serve awaits async constructors; mypy only knows sync ones.
    async def __init__(  # type: ignore[misc]
        self, federation: str, settings: dict[str, Any], providers: dict[str, DeploymentHandle[Any]]
    ) -> None:
        resolved = Settings.with_env_secrets(settings)
        ledger = get_ledger(resolved.resolved_database_url, resolved.ledger_shards)
        self._runtime = await Runtime.open(
            load_federation(federation), resolved, gateway=RayGateway(providers), ledger=ledger
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._runtime)
