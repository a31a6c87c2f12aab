"""The seam between a call and its provider: `ProviderGateway`, and `LocalGateway` that runs actions in-process.

On Ray the gateway is a Serve `DeploymentHandle` per provider (see `actors/gateway.py`); the ledger's seam is
`downcity.ledger.LedgerPort`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from downcity.gateway.actions import ActionRequest, OpenAIOutcome, TextOutcome, VideoOutcome
from downcity.gateway.runner import ProviderRunner
from downcity.types import ImageJobResult

__all__ = ["LocalGateway", "ProviderGateway"]


class ProviderGateway(Protocol):
    """Calls one provider's actions by provider id."""

    async def text(self, provider_id: str, req: ActionRequest) -> TextOutcome: ...

    def stream(self, provider_id: str, req: ActionRequest) -> AsyncIterator[list[dict[str, Any]]]: ...

    async def openai(self, provider_id: str, req: ActionRequest) -> OpenAIOutcome: ...

    def openai_stream(self, provider_id: str, req: ActionRequest) -> AsyncIterator[bytes | dict[str, Any]]: ...

    async def image_create(self, provider_id: str, req: ActionRequest) -> ImageJobResult: ...

    async def image_fetch(self, provider_id: str, req: ActionRequest) -> ImageJobResult: ...

    async def video(self, provider_id: str, req: ActionRequest) -> VideoOutcome: ...


class LocalGateway:
    """A gateway that runs provider actions in this process (tests, embedded use)."""

    def __init__(self, runners: dict[str, ProviderRunner]) -> None:
        self.runners = runners

    async def text(self, provider_id: str, req: ActionRequest) -> TextOutcome:
        """Run the provider's text action."""
        return await self.runners[provider_id].text(req)

    def stream(self, provider_id: str, req: ActionRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """Run the provider's stream action."""
        return self.runners[provider_id].stream(req)

    async def openai(self, provider_id: str, req: ActionRequest) -> OpenAIOutcome:
        """Run the provider's non-streaming chat/completions."""
        return await self.runners[provider_id].openai(req)

    def openai_stream(self, provider_id: str, req: ActionRequest) -> AsyncIterator[bytes | dict[str, Any]]:
        """Run the provider's streaming chat/completions."""
        return self.runners[provider_id].openai_stream(req)

    async def image_create(self, provider_id: str, req: ActionRequest) -> ImageJobResult:
        """Create an upstream image job."""
        return await self.runners[provider_id].image_create(req)

    async def image_fetch(self, provider_id: str, req: ActionRequest) -> ImageJobResult:
        """Poll an upstream image job."""
        return await self.runners[provider_id].image_fetch(req)

    async def video(self, provider_id: str, req: ActionRequest) -> VideoOutcome:
        """Run the provider's video action."""
        return await self.runners[provider_id].video(req)

    async def aclose(self) -> None:
        """Close every runner's HTTP pool."""
        for runner in self.runners.values():
            await runner.aclose()
