"""An in-process runtime: providers, the Ledger and the JobManager in this process, no Ray.

For tests and embedding.
"""

from __future__ import annotations

from downcity.ai.federation import Federation
from downcity.env import EnvCache, EnvStore
from downcity.gateway.ports import LocalGateway
from downcity.gateway.runner import ProviderRunner
from downcity.jobs import JobManager
from downcity.jobs.store import JobStore
from downcity.ledger import Ledger
from downcity.runtime import Runtime, bootstrap
from downcity.secrets import MasterKey
from downcity.settings import Settings
from downcity.store import Database


async def open_local_runtime(federation: Federation, settings: Settings, *, db: Database | None = None) -> Runtime:
    """Migrate, then open a runtime whose gateway, ledger and JobManager run in this process."""
    database = db or Database(settings.resolved_database_url)
    await bootstrap(settings, database)
    env = EnvCache(EnvStore(database, MasterKey.load(settings)))
    runners = {
        provider_id: ProviderRunner(
            provider,
            {model_id: model for model_id, model in federation.models.items() if model.provider.id == provider_id},
            env,
        )
        for provider_id, provider in federation.providers.items()
    }
    gateway = LocalGateway(runners)
    ledger = Ledger(database, hold_expiry_s=settings.hold_expiry_s)
    await ledger.start()
    jobs = JobManager(federation, JobStore(database), gateway, ledger, settings)
    await jobs.start()
    runtime = await Runtime.open(federation, settings, gateway=gateway, ledger=ledger, jobs=jobs, db=database, env=env)
    # on_stop runs in reverse: the JobManager stops before the Ledger and the gateway close.
    runtime.on_stop.extend([ledger.close, gateway.aclose, jobs.stop])
    return runtime
