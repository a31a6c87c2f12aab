"""The Ingress Serve deployment: the FastAPI app from `downcity.http` over a Ray-backed runtime."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.actor import ActorHandle
from ray.serve.handle import DeploymentHandle

from actors.cli.status import report, snapshot
from actors.gateway import RayGateway, relay_gateway
from actors.jobs import JobManagerActor, JobManagerClient, get_job_manager
from actors.ledger import LedgerClient, get_ledger
from actors.metrics import ray_metrics
from actors.quotas import get_quotas
from downcity.gateway.ports import ProviderGateway
from downcity.http.app import create_app
from downcity.readiness import NotReady, Readiness, ReadinessCheck
from downcity.runtime import Runtime, load_federation
from downcity.secrets import MasterKey
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
        context = serve.get_replica_context()
        app_name = context.app_name
        manager = get_job_manager(federation, settings, app_name=app_name, resources=control_resources)
        gateway: ProviderGateway = (
            RayGateway(providers)
            if resolved.provider_hop == "handle"
            else relay_gateway(providers, MasterKey.load(resolved))
        )
        self._runtime = await Runtime.open(
            load_federation(federation),
            resolved,
            gateway=gateway,
            ledger=ledger,
            jobs=JobManagerClient(manager),
            metrics=ray_metrics(),
            quotas=get_quotas(resolved.resolved_database_url, resources=control_resources),
            # What an operator sees in `holds.owner`: the replica, as Serve names it (its actor is
            # `SERVE_REPLICA::<this>`).
            lease_owner=f"{app_name}#{context.deployment}#{context.replica_id.unique_id}",
        )
        add_ray_checks(self._runtime.readiness, providers, ledger, manager, resolved.ready_requires_env)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._runtime, system=cluster_report)


async def cluster_report() -> dict[str, Any]:
    """What `downcity status --json` prints, asked from inside the cluster (off the replica's event loop)."""
    return await asyncio.to_thread(lambda: report(snapshot()))


def add_ray_checks(
    readiness: Readiness,
    providers: dict[str, DeploymentHandle[Any]],
    ledger: LedgerClient,
    manager: ActorHandle[JobManagerActor],
    required_env: tuple[str, ...],
) -> None:
    """Ready means: a replica of every provider deployment answers (holding `required_env`), the Ledger
    shards run and the JobManager has recovered its jobs."""
    for provider_id, handle in providers.items():
        readiness.add(f"provider-{provider_id}", _provider_check(handle, required_env))

    async def manager_ready() -> None:
        await manager.ready.remote()

    readiness.add("ledger", ledger.ping)
    readiness.add("job_manager", manager_ready)


def _provider_check(handle: DeploymentHandle[Any], required_env: tuple[str, ...]) -> ReadinessCheck:
    async def check() -> None:
        missing: list[str] = await handle.missing_env.remote(list(required_env))
        if missing:
            raise NotReady(f"{', '.join(missing)} not set")

    return check
