"""The asyncio transport: sends request specs over `httpx.AsyncClient` with retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from downcity.client._base import (
    Operation,
    RequestSpec,
    StreamDecoder,
    build_request,
    http_options,
    parse_response,
    retry_delay,
)
from downcity.client._errors import error_from_response, error_from_transport

T = TypeVar("T")


class AsyncTransport:
    """Runs operations on one `httpx.AsyncClient`, retrying transient connection failures."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        timeout: float,
        retries: int,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._client = httpx.AsyncClient(**http_options(url, headers, timeout), transport=transport)
        self._retries = retries

    async def call(self, operation: Operation[T]) -> T:
        """Send the operation's request and parse its response."""
        return parse_response(await self._send(operation.request, stream=False), operation)

    async def stream(self, spec: RequestSpec) -> AsyncIterator[dict[str, Any]]:
        """Yield the chunks of a UI message stream until `[DONE]`."""
        response = await self._send(spec, stream=True)
        try:
            if not response.is_success:
                await response.aread()
                raise error_from_response(response)
            decoder = StreamDecoder(response.status_code)
            try:
                async for line in response.aiter_lines():
                    chunk = decoder.feed(line)
                    if decoder.done:
                        return
                    if chunk is not None:
                        yield chunk
            except httpx.TransportError as exc:
                raise error_from_transport(exc, 1) from exc
            decoder.finish()
        finally:
            await response.aclose()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _send(self, spec: RequestSpec, *, stream: bool) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return await self._client.send(build_request(self._client, spec), stream=stream)
            except httpx.TransportError as exc:
                delay = retry_delay(exc, spec, attempt, self._retries)
                if delay is None:
                    raise error_from_transport(exc, attempt + 1) from exc
            await asyncio.sleep(delay)
            attempt += 1


class AsyncClient:
    """Owns an `AsyncTransport`; usable as an async context manager."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        timeout: float,
        retries: int,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._transport = AsyncTransport(url, headers, timeout=timeout, retries=retries, transport=transport)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncNamespace:
    """A group of async methods (`client.ai`, `admin.tokens`…) sharing the client's transport."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport
