"""The per-process runtime an ingress replica (or an in-process test app) serves from."""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from downcity.ai.federation import Federation
from downcity.ai.federation_file import is_federation_file, load_federation_file
from downcity.auth import (
    AdminCredential,
    KeyRing,
    RevocationCache,
    RevocationStore,
    TokenIssuer,
    TokenVerifier,
)
from downcity.cities import CityCache, CityStore
from downcity.env import EnvCache, EnvStore
from downcity.gateway.ports import ProviderGateway
from downcity.ledger.leases import LeaseBook, LeasePolicy
from downcity.ledger.renewer import HoldRenewer
from downcity.ledger.types import LedgerPort
from downcity.metrics import Metrics, NoMetrics
from downcity.quotas import QuotaBook, QuotaCache, QuotaPort, QuotaStore
from downcity.readiness import Readiness, required_env_check
from downcity.secrets import MasterKey
from downcity.settings import Settings
from downcity.store import Database

logger = logging.getLogger("downcity.runtime")


def load_federation(path: str) -> Federation:
    """The Federation a YAML file declares (a path ending .yaml/.yml), or that `module:attribute` names."""
    if is_federation_file(path):
        return load_federation_file(path)
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"federation {path!r} must look like 'package.module:federation' or be a .yaml file")
    value = getattr(importlib.import_module(module_name), attribute)
    if callable(value) and not isinstance(value, Federation):
        value = value()
    if not isinstance(value, Federation):
        raise TypeError(f"{path!r} is a {type(value).__name__}, not a Federation")
    return value


class JobsPort(Protocol):
    """Where new image jobs are handed for polling: the JobManager in-process, or its Ray actor."""

    async def notify(self, job_id: str, provider_id: str, due_ms: int) -> None: ...


@dataclass
class Security:
    """Everything that authenticates callers, loaded once per process and refreshed by polling."""

    admin: AdminCredential
    keyring: KeyRing
    revocations: RevocationStore
    revocation_cache: RevocationCache
    verifier: TokenVerifier
    issuer: TokenIssuer


@dataclass
class Runtime:
    """Federation, storage, caches, the provider gateway and the ledger for one process."""

    federation: Federation
    settings: Settings
    db: Database
    master_key: MasterKey
    env_store: EnvStore
    env: EnvCache
    cities: CityStore
    city_cache: CityCache
    security: Security
    gateway: ProviderGateway
    ledger: LedgerPort
    quotas: QuotaPort
    quota_store: QuotaStore
    quota_cache: QuotaCache
    jobs: JobsPort | None = None
    metrics: Metrics = field(default_factory=NoMetrics)
    readiness: Readiness = field(default_factory=Readiness)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The name this process's credit leases carry in `holds.owner`; a random one when not given.
    lease_owner: str | None = None
    renewer: HoldRenewer = field(init=False)
    leases: LeaseBook | None = field(init=False)

    def __post_init__(self) -> None:
        self.renewer = HoldRenewer(self.ledger, self.settings.hold_expiry_s / 3)
        policy = LeasePolicy.from_settings(self.settings)
        owner = self.lease_owner or f"process-{uuid.uuid4().hex[:16]}"
        self.leases = LeaseBook(self.ledger, owner, policy, metrics=self.metrics) if policy.enabled else None

    @classmethod
    async def open(
        cls,
        federation: Federation,
        settings: Settings,
        *,
        gateway: ProviderGateway,
        ledger: LedgerPort,
        jobs: JobsPort | None = None,
        metrics: Metrics | None = None,
        db: Database | None = None,
        env: EnvCache | None = None,
        quotas: QuotaPort | None = None,
        lease_owner: str | None = None,
    ) -> Runtime:
        """Connect storage and load every cache; the database must already be migrated.

        `quotas` defaults to a `QuotaBook` in this process (one process serves every call: tests, embedding).
        """
        database = db or Database(settings.resolved_database_url)
        master_key = MasterKey.load(settings)
        env_store = EnvStore(database, master_key)
        cities = CityStore(database)
        keyring = KeyRing(database, master_key)
        revocations = RevocationStore(database)
        revocation_cache = RevocationCache(revocations)
        security = Security(
            admin=await AdminCredential.load(database),
            keyring=keyring,
            revocations=revocations,
            revocation_cache=revocation_cache,
            verifier=TokenVerifier(keyring, revocation_cache),
            issuer=TokenIssuer(keyring, cities),
        )
        runtime = cls(
            federation=federation,
            settings=settings,
            db=database,
            master_key=master_key,
            env_store=env_store,
            env=env or EnvCache(env_store),
            cities=cities,
            city_cache=CityCache(cities),
            security=security,
            gateway=gateway,
            ledger=ledger,
            quotas=quotas or QuotaBook(database),
            quota_store=(quota_store := QuotaStore(database)),
            quota_cache=QuotaCache(quota_store),
            jobs=jobs,
            metrics=metrics or NoMetrics(),
            lease_owner=lease_owner,
        )
        if settings.ready_requires_env:
            runtime.readiness.add("required_env", required_env_check(runtime.env, settings.ready_requires_env))
        await runtime.refresh()
        return runtime

    async def refresh(self) -> None:
        """Reload every cache whose version changed."""
        await self.env.refresh()
        await self.city_cache.refresh()
        await self.quota_cache.refresh()
        await self.security.keyring.refresh()
        await self.security.revocation_cache.refresh()

    async def start(self) -> None:
        """Start the background refreshers (pause, key rotation and revocation reach us within ~1 s)."""
        await self.env.start()
        await self.city_cache.start()
        await self.quota_cache.start()
        await self.security.keyring.start()
        await self.security.revocation_cache.start()
        if self.leases is not None:
            self.leases.start()

    async def stop(self) -> None:
        """Stop the refreshers and close the database pool."""
        await self.env.stop()
        await self.city_cache.stop()
        await self.quota_cache.stop()
        await self.security.keyring.stop()
        await self.security.revocation_cache.stop()
        await self.renewer.close()
        if self.leases is not None:
            await self.leases.close()
        for close in reversed(self.on_stop):
            await close()
        self.metrics.flush()
        await self.db.dispose()


async def bootstrap(settings: Settings, db: Database | None = None) -> str | None:
    """Migrate, create the first signing key and the admin credential; returns a new admin key once."""
    database = db or Database(settings.resolved_database_url)
    try:
        await database.migrate()
        await KeyRing(database, MasterKey.load(settings)).ensure_active()
        return await AdminCredential.ensure(database, settings)
    finally:
        if db is None:
            await database.dispose()
