"""The provider gateway over Serve `DeploymentHandle`s, one per provider deployment: handle calls, or the byte
relay (`downcity.gateway.relay`) to a replica the handle's router picks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar, cast

from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import ActionRequest, OpenAIOutcome, TextOutcome, VideoOutcome
from downcity.gateway.relay import Endpoint, EndpointPicker, RelayClient, pick_error
from downcity.secrets import MasterKey
from downcity.types import ImageJobResult

T = TypeVar("T")

# What a provider replica publishes through Serve's `record_replica_metadata` hook: its relay's host and port.
RELAY_METADATA = "relay"
RELAY_PURPOSE = "provider relay"


def relay_token(master_key: MasterKey) -> str:
    """The token the ingress and the provider replicas share for the relay, derived from the master key."""
    return master_key.derive(RELAY_PURPOSE)


def unwrap(error: BaseException) -> BaseException:
    """The DowncityHTTPError a replica raised, instead of Ray's wrapper around it."""
    if isinstance(error, RayTaskError) and isinstance(error.cause, DowncityHTTPError):
        cause = error.cause
        return DowncityHTTPError(
            cause.status, cause.type, cause.message, cause.field, headers=cause.headers, detail=cause.detail
        )
    if isinstance(error, DowncityHTTPError):
        return DowncityHTTPError(
            error.status, error.type, error.message, error.field, headers=error.headers, detail=error.detail
        )
    return pick_error(error)


def _handle_of(handles: dict[str, DeploymentHandle[Any]], provider_id: str) -> DeploymentHandle[Any]:
    try:
        return handles[provider_id]
    except KeyError:
        raise DowncityHTTPError(503, "provider_unavailable", f"no deployment for provider {provider_id!r}") from None


async def _call(response: Awaitable[T]) -> T:
    try:
        return await response
    except Exception as error:
        raise unwrap(error) from None


class RayGateway:
    """Calls provider deployments through their handles; streams coalesced chunk batches."""

    def __init__(self, handles: dict[str, DeploymentHandle[Any]]) -> None:
        # Requests and outcomes are plain pydantic models of importable classes: the standard pickler serves
        # them, and on the text path it beat Serve's default cloudpickle by ~15% in requests/s.
        self.handles = {
            pid: handle.options(request_serialization="pickle", response_serialization="pickle")
            for pid, handle in handles.items()
        }
        self.streaming = {pid: handle.options(stream=True) for pid, handle in self.handles.items()}

    def _handle(self, provider_id: str) -> DeploymentHandle[Any]:
        return _handle_of(self.handles, provider_id)

    async def text(self, provider_id: str, req: ActionRequest) -> TextOutcome:
        """Run the provider's text action on its deployment."""
        return await _call(self._handle(provider_id).text.remote(req))

    async def stream(self, provider_id: str, req: ActionRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """Stream batches from the provider's deployment; closing this cancels the upstream call."""
        self._handle(provider_id)
        generator = cast(DeploymentResponseGenerator[Any], self.streaming[provider_id].stream.remote(req))
        try:
            async for batch in generator:
                yield batch
        except Exception as error:
            raise unwrap(error) from None
        finally:
            generator.cancel()  # type: ignore[no-untyped-call]

    async def openai(self, provider_id: str, req: ActionRequest) -> OpenAIOutcome:
        """Non-streaming chat/completions on the provider's deployment."""
        return await _call(self._handle(provider_id).openai.remote(req))

    async def openai_stream(self, provider_id: str, req: ActionRequest) -> AsyncIterator[bytes | dict[str, Any]]:
        """Streaming chat/completions: raw upstream SSE bytes, then one usage dict."""
        self._handle(provider_id)
        generator = cast(DeploymentResponseGenerator[Any], self.streaming[provider_id].openai_stream.remote(req))
        try:
            async for item in generator:
                yield item
        except Exception as error:
            raise unwrap(error) from None
        finally:
            generator.cancel()  # type: ignore[no-untyped-call]

    async def image_create(self, provider_id: str, req: ActionRequest) -> ImageJobResult:
        """Create an upstream image job."""
        return await _call(self._handle(provider_id).image_create.remote(req))

    async def image_fetch(self, provider_id: str, req: ActionRequest) -> ImageJobResult:
        """Poll an upstream image job."""
        return await _call(self._handle(provider_id).image_fetch.remote(req))

    async def video(self, provider_id: str, req: ActionRequest) -> VideoOutcome:
        """Run the provider's video action."""
        return await _call(self._handle(provider_id).video.remote(req))


def router_picker(handles: dict[str, DeploymentHandle[Any]]) -> EndpointPicker:
    """Picks each call's replica with the provider handle's request router, and reads its relay endpoint.

    `choose_replica` is public in Ray Serve 2.60; `_reserve=False` (private, as Ray Serve LLM's byte relay passes
    it) skips reserving a slot on the replica, an actor call of its own that would cost what the relay saves.
    """

    async def pick(provider_id: str) -> Endpoint:
        handle = _handle_of(handles, provider_id)
        async with handle.choose_replica(_reserve=False) as selection:
            endpoint = selection.replica_metadata.get(RELAY_METADATA)
        if endpoint is None:
            raise DowncityHTTPError(
                503, "provider_unavailable", f"replica {selection.replica_id} of provider {provider_id!r} has no relay"
            )
        host, port = endpoint
        return str(host), int(port)

    return pick


def relay_gateway(handles: dict[str, DeploymentHandle[Any]], master_key: MasterKey) -> RelayClient:
    """The byte relay to the provider deployments behind `handles`."""
    return RelayClient(router_picker(handles), relay_token(master_key))
