"""The blocking transport: sends request specs over `httpx.Client` with retries."""

from __future__ import annotations

import time
from collections.abc import Iterator
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


class SyncTransport:
    """Runs operations on one `httpx.Client`, retrying transient connection failures."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        timeout: float,
        retries: int,
        transport: httpx.BaseTransport | None,
    ) -> None:
        self._client = httpx.Client(**http_options(url, headers, timeout), transport=transport)
        self._retries = retries

    def call(self, operation: Operation[T]) -> T:
        """Send the operation's request and parse its response."""
        return parse_response(self._send(operation.request, stream=False), operation)

    def stream(self, spec: RequestSpec) -> Iterator[dict[str, Any]]:
        """Yield the chunks of a UI message stream until `[DONE]`."""
        response = self._send(spec, stream=True)
        try:
            if not response.is_success:
                response.read()
                raise error_from_response(response)
            decoder = StreamDecoder(response.status_code)
            try:
                for line in response.iter_lines():
                    chunk = decoder.feed(line)
                    if decoder.done:
                        return
                    if chunk is not None:
                        yield chunk
            except httpx.TransportError as exc:
                raise error_from_transport(exc, 1) from exc
            decoder.finish()
        finally:
            response.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _send(self, spec: RequestSpec, *, stream: bool) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return self._client.send(build_request(self._client, spec), stream=stream)
            except httpx.TransportError as exc:
                delay = retry_delay(exc, spec, attempt, self._retries)
                if delay is None:
                    raise error_from_transport(exc, attempt + 1) from exc
            time.sleep(delay)
            attempt += 1


class SyncClient:
    """Owns a `SyncTransport`; usable as a context manager."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        timeout: float,
        retries: int,
        transport: httpx.BaseTransport | None,
    ) -> None:
        self._transport = SyncTransport(url, headers, timeout=timeout, retries=retries, transport=transport)

    def close(self) -> None:
        """Close the connection pool."""
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class SyncNamespace:
    """A group of methods (`client.ai`, `admin.tokens`…) sharing the client's transport."""

    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport
