"""The JobManager as a detached, named Ray actor, `get_job_manager` and the ingress's `JobManagerClient`.

The actor wraps `downcity.jobs.JobManager`. It is restarted by Ray after a crash (`max_restarts=-1`) and,
on every (re)start, loads every unfinished job from the database, so nothing is stranded. Its calls are
retried across restarts (`max_task_retries=-1`): `notify` and `wait` are harmless to repeat, and `submit`
always carries an idempotency key. It reaches providers through their Serve deployments, by name, in the
Serve application `app_name`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import ray
from ray import serve
from ray.actor import ActorHandle
from ray.serve.handle import DeploymentHandle

from actors.gateway import RayGateway
from actors.ledger import get_ledger
from actors.metrics import ray_metrics, report_jobs_forever
from actors.placement import HEAD_PINNED
from actors.serving import RAY_NAMESPACE
from downcity.ai.context import CityInfo, UserInfo
from downcity.ai.federation import Federation
from downcity.cities import CityStore
from downcity.errors import DowncityHTTPError
from downcity.jobs import JobManager
from downcity.jobs.store import JobStore
from downcity.jobs.submit import submit_image_job
from downcity.runtime import load_federation
from downcity.settings import Settings
from downcity.store import Database

logger = logging.getLogger(__name__)

JOB_MANAGER_NAME = "downcity-jobs-v1"
DEFAULT_APP_NAME = "downcity"
# Set at creation: ray.remote's typed keyword overload has no max_concurrency.
ACTOR_OPTIONS: dict[str, Any] = {
    "namespace": RAY_NAMESPACE,
    "lifetime": "detached",
    "get_if_exists": True,
    "max_restarts": -1,
    "max_task_retries": -1,
    "num_cpus": 0,
    "max_concurrency": 100_000,
}
_START_RETRY_S = 1.0


def provider_handles(app_name: str, provider_ids: list[str]) -> dict[str, DeploymentHandle[Any]]:
    """A handle per `provider-<id>` deployment of the Serve application `app_name`."""
    return {
        pid: serve.get_deployment_handle(f"provider-{pid}", app_name=app_name, _check_exists=False)
        for pid in provider_ids
    }


class JobManagerActor:
    """One JobManager in its own process; it starts (and recovers every unfinished job) on construction."""

    def __init__(self, federation: str, settings: dict[str, Any], app_name: str, name: str) -> None:
        self._federation_path = federation
        self._settings = Settings.with_env_secrets(settings)
        self._app_name = app_name
        self._name = name
        self._db = Database(self._settings.resolved_database_url)
        self._federation: Federation | None = None
        self._manager: JobManager | None = None
        self._reporter: asyncio.Task[None] | None = None
        # Started here rather than on a first call: after a restart nobody may call for a while.
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> JobManager:
        while True:
            try:
                return await self._open()
            except Exception:
                logger.exception("the JobManager could not start; retrying")
                await asyncio.sleep(_START_RETRY_S)

    async def _open(self) -> JobManager:
        federation = load_federation(self._federation_path)
        settings = self._settings
        handles = await asyncio.to_thread(provider_handles, self._app_name, list(federation.providers))
        ledger = await asyncio.to_thread(get_ledger, settings.resolved_database_url, settings.ledger_shards)
        manager = JobManager(federation, JobStore(self._db), RayGateway(handles), ledger, settings, owner=self._name)
        await manager.start()
        self._reporter = asyncio.get_running_loop().create_task(report_jobs_forever(manager.stats, ray_metrics()))
        self._federation, self._manager = federation, manager
        return manager

    async def _ready(self) -> JobManager:
        return await asyncio.shield(self._starting)

    async def ready(self) -> None:
        """Return once the JobManager has started and recovered every unfinished job."""
        await self._ready()

    async def notify(self, job_id: str, provider_id: str, due_ms: int) -> None:
        """Schedule a job stored elsewhere (the ingress)."""
        await (await self._ready()).notify(job_id, provider_id, due_ms)

    async def submit(
        self,
        city_id: str,
        user_id: str,
        body: dict[str, Any],
        idempotency_key: str,
        user_metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create (or find, by key) an image job for a user of an active city and schedule it."""
        manager = await self._ready()
        city = await CityStore(self._db).get(city_id)
        if city.status != "active":
            raise DowncityHTTPError(403, "city_paused", f"city {city_id!r} is paused")
        record = await submit_image_job(
            manager.federation,
            manager.gateway,
            manager.ledger,
            manager.store,
            user=UserInfo(user_id=user_id, metadata=user_metadata or {}),
            city=CityInfo(city_id=city.city_id, name=city.name, status=city.status),
            body=body,
            client_key=idempotency_key,
            default_poll_ms=self._settings.image_poll_interval_ms,
        )
        if record.next_poll_at_ms is not None:
            manager.schedule(record.job_id, record.provider_id, record.next_poll_at_ms)
        return record.to_public(self._settings.image_poll_interval_ms)

    async def wait(self, job_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The job as its owner sees it once finished (billed), or as it stands after `timeout_s`."""
        record = await (await self._ready()).wait(job_id, timeout_s)
        return record.to_public(self._settings.image_poll_interval_ms) if record is not None else None

    async def stats(self) -> dict[str, Any]:
        """The scheduler's counts and lag, and this process's CPU seconds so far."""
        return {**(await self._ready()).stats(), "cpu_s": time.process_time()}


# Decorating in place would hide `.options` from mypy, which types a decorated class as the class itself.
JobManagerActorClass = ray.remote(JobManagerActor)


def get_job_manager(
    federation: str,
    settings: dict[str, Any],
    *,
    app_name: str = DEFAULT_APP_NAME,
    name: str = JOB_MANAGER_NAME,
    resources: dict[str, float] | None = None,
) -> ActorHandle[JobManagerActor]:
    """The JobManager actor, created if needed (detached: it outlives the caller).

    A new actor requests `resources` (default: a share of the head node, see `actors.placement`). An actor
    that already exists under the name keeps the federation, settings, app and placement it was created with.
    """
    placement = HEAD_PINNED if resources is None else resources
    options = JobManagerActorClass.options(name=name, resources=placement, **ACTOR_OPTIONS)
    return cast(ActorHandle[JobManagerActor], options.remote(federation, settings, app_name, name))


class JobManagerClient:
    """The `JobsPort` of a Ray-backed runtime: hands new jobs to the JobManager actor."""

    def __init__(self, handle: ActorHandle[JobManagerActor]) -> None:
        self.handle = handle

    async def notify(self, job_id: str, provider_id: str, due_ms: int) -> None:
        """Schedule a stored job on the actor."""
        await self.handle.notify.remote(job_id, provider_id, due_ms)
