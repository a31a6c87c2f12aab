"""An in-process runtime: providers and the Ledger in this process, no Ray. For tests and embedding."""

from __future__ import annotations

from downcity.env import EnvCache, EnvStore
from downcity.federation import Federation
from downcity.ledger import Ledger
from downcity.ports import LocalGateway
from downcity.runner import ProviderRunner
from downcity.runtime import Runtime, bootstrap
from downcity.secrets import MasterKey
from downcity.settings import Settings
from downcity.store import Database


async def open_local_runtime(
    federation: Federation, settings: Settings, *, db: Database | None = None
) -> Runtime:
    """Migrate, then open a runtime whose gateway and ledger run in this process."""
    database = db or Database(settings.resolved_database_url)
    await bootstrap(settings, database)
    env = EnvCache(EnvStore(database, MasterKey.load(settings)))
    runners = {
        provider_id: ProviderRunner(
            provider,
            {
                model_id: model
                for model_id, model in federation.models.items()
                if model.provider.id == provider_id
            },
            env,
        )
        for provider_id, provider in federation.providers.items()
    }
    gateway = LocalGateway(runners)
    ledger = Ledger(database, hold_expiry_s=settings.hold_expiry_s)
    await ledger.start()
    runtime = await Runtime.open(federation, settings, gateway=gateway, ledger=ledger, db=database, env=env)
    runtime.on_stop.extend([ledger.close, gateway.aclose])
    return runtime
