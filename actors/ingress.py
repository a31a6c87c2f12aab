"""The Ingress Serve deployment: the FastAPI app from `downcity.http` over a Ray-backed runtime."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.gateway import RayGateway
from actors.jobs import JobManagerClient, get_job_manager
from actors.ledger import get_ledger
from actors.metrics import ray_metrics
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
        self,
        federation: str,
        settings: dict[str, Any],
        providers: dict[str, DeploymentHandle[Any]],
        control_resources: dict[str, float] | None = None,
    ) -> None:
        resolved = Settings.with_env_secrets(settings)
        ledger = get_ledger(resolved.resolved_database_url, resolved.ledger_shards, resources=control_resources)
        app_name = serve.get_replica_context().app_name
        manager = get_job_manager(federation, settings, app_name=app_name, resources=control_resources)
        self._runtime = await Runtime.open(
            load_federation(federation),
            resolved,
            gateway=RayGateway(providers),
            ledger=ledger,
            jobs=JobManagerClient(manager),
            metrics=ray_metrics(),
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._runtime)
