"""One Serve deployment per provider: its own pooled HTTP client, keys read through the env cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve

from actors.gateway import RELAY_METADATA, relay_token
from actors.metrics import ray_metrics
from downcity.env import EnvCache, EnvStore
from downcity.gateway.actions import ActionRequest, OpenAIOutcome, TextOutcome, VideoOutcome
from downcity.gateway.relay import RelayServer
from downcity.gateway.resilience import CLOSED
from downcity.gateway.runner import ProviderRunner
from downcity.readiness import missing_env
from downcity.runtime import load_federation
from downcity.secrets import MasterKey, scrub_everywhere
from downcity.settings import Settings
from downcity.store import Database
from downcity.types import ImageJobResult

# Streams hold a slot for their whole life, so Ray's default of 5 would cap a provider at 5 streams.
PROVIDER_MAX_ONGOING_REQUESTS = 256


# No Serve access log: the ingress logs every request and writes its usage row, and formatting a second line
# per call cost a provider replica ~6% of its CPU under load.
@serve.deployment(
    max_ongoing_requests=PROVIDER_MAX_ONGOING_REQUESTS,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},
)
class ProviderDeployment:
    """Runs one provider's actions for the ingress: by handle call, or on its relay port (`gateway.relay`)."""

    # Serve awaits async constructors; mypy only knows sync ones.
    async def __init__(self, federation: str, provider_id: str, settings: dict[str, Any]) -> None:  # type: ignore[misc]
        loaded = load_federation(federation)
        provider = loaded.providers[provider_id]
        models = {model_id: m for model_id, m in loaded.models.items() if m.provider.id == provider_id}
        resolved = Settings.with_env_secrets(settings)
        master_key = MasterKey.load(resolved)
        self._db = Database(resolved.resolved_database_url, pool_size=2)
        self._env = EnvCache(EnvStore(self._db, master_key))
        await self._env.refresh()
        await self._env.start()
        # This replica holds its provider's keys: no log line it writes may carry one.
        scrub_everywhere(self._env.stored_values)
        metrics = ray_metrics()
        self._runner = ProviderRunner(
            provider,
            models,
            self._env,
            on_state_change=lambda scope, state: metrics.breaker_changed(provider_id, scope, state),
        )
        for scope in self._runner.upstream.scopes():
            metrics.breaker_changed(provider_id, scope, CLOSED)
        self._metadata: dict[str, Any] = {}
        self._relay: RelayServer | None = None
        if resolved.provider_hop == "relay":
            self._relay = RelayServer(self._runner, relay_token(master_key))
            port = await self._relay.start()
            self._metadata[RELAY_METADATA] = [ray.util.get_node_ip_address(), port]  # type: ignore[no-untyped-call]

    def record_replica_metadata(self) -> dict[str, Any]:
        """Serve's hook for what routers learn of this replica once, when it is ready: where its relay listens."""
        return self._metadata

    async def text(self, req: ActionRequest) -> TextOutcome:
        """The provider's text action."""
        return await self._runner.text(req)

    async def stream(self, req: ActionRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """The provider's stream action, as coalesced chunk batches."""
        async for batch in self._runner.stream(req):
            yield batch

    async def openai(self, req: ActionRequest) -> OpenAIOutcome:
        """Non-streaming chat/completions."""
        return await self._runner.openai(req)

    async def openai_stream(self, req: ActionRequest) -> AsyncIterator[bytes | dict[str, Any]]:
        """Streaming chat/completions bytes, then one usage dict."""
        async for item in self._runner.openai_stream(req):
            yield item

    async def image_create(self, req: ActionRequest) -> ImageJobResult:
        """Create an upstream image job."""
        return await self._runner.image_create(req)

    async def image_fetch(self, req: ActionRequest) -> ImageJobResult:
        """Poll an upstream image job."""
        return await self._runner.image_fetch(req)

    async def video(self, req: ActionRequest) -> VideoOutcome:
        """The provider's video action."""
        return await self._runner.video(req)

    def record_routing_stats(self) -> dict[str, Any]:
        """Serve's per-replica stats hook: this replica's circuit breakers and key pool, read by `downcity status`."""
        return {"resilience": self._runner.upstream.snapshot()}

    async def missing_env(self, keys: list[str]) -> list[str]:
        """Which of `keys` this replica cannot read yet (readiness waits for seeded provider keys)."""
        return missing_env(self._env, keys)

    async def check_health(self) -> None:
        """Serve health check: the env cache must still be refreshing."""
        await self._env.refresh()
