"""What the sync and async clients share: request specs, response parsing, retries, SSE and polling."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx

from downcity.client._errors import (
    CONNECTION_ERROR,
    INVALID_RESPONSE,
    TIMEOUT,
    DowncityError,
    error_from_response,
)
from downcity.client._models import ImageJob

T = TypeVar("T")
Method = Literal["GET", "POST"]

BACKOFF_BASE_S = 0.1
DEFAULT_POLL_MS = 1000
USER_AGENT = "downcity-python/0.1"
# The request never reached the server: safe to repeat for any call.
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
# The request may have reached the server: safe to repeat only when repeating cannot change the outcome.
_RESPONSE_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_ERROR_TEXT = re.compile(r"^([a-z][a-z0-9_]*): (.*)$", re.DOTALL)


@dataclass(frozen=True)
class RequestSpec:
    """One HTTP request, independent of the client that sends it."""

    method: Method
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_safe: bool = False

    @property
    def idempotent(self) -> bool:
        """True when sending it twice has the effect of sending it once."""
        return self.method == "GET" or self.retry_safe


@dataclass(frozen=True)
class Operation(Generic[T]):
    """A request and the function turning its JSON response into a typed result."""

    request: RequestSpec
    parse: Callable[[Any], T]


def client_headers(credential: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers every request of one client carries."""
    return {"Authorization": f"Bearer {credential}", "User-Agent": USER_AGENT, **(extra or {})}


def http_options(url: str, headers: dict[str, str], timeout: float) -> dict[str, Any]:
    """Keyword arguments for `httpx.Client` and `httpx.AsyncClient`."""
    return {"base_url": url.rstrip("/"), "headers": headers, "timeout": httpx.Timeout(timeout)}


def build_request(client: httpx.Client | httpx.AsyncClient, spec: RequestSpec) -> httpx.Request:
    """The httpx request for `spec`, resolved against the client's base URL and headers."""
    return client.build_request(spec.method, spec.path, json=spec.json, params=spec.params, headers=spec.headers)


def retry_delay(exc: httpx.TransportError, spec: RequestSpec, attempt: int, retries: int) -> float | None:
    """Seconds to wait before retrying after failed `attempt` (0-based), or None to give up."""
    if attempt >= retries:
        return None
    if isinstance(exc, _CONNECT_ERRORS) or (spec.idempotent and isinstance(exc, _RESPONSE_ERRORS)):
        return float(BACKOFF_BASE_S * 2**attempt)
    return None


def parse_response(response: httpx.Response, operation: Operation[T]) -> T:
    """The typed result of a fully read response, or the DowncityError it carries."""
    if not response.is_success:
        raise error_from_response(response)
    try:
        body = response.json()
    except ValueError:
        raise DowncityError(response.status_code, INVALID_RESPONSE, "response body is not JSON") from None
    try:
        return operation.parse(body)
    except (KeyError, TypeError, ValueError) as exc:
        message = f"unexpected response from {operation.request.path}: {exc}"
        raise DowncityError(response.status_code, INVALID_RESPONSE, message) from None


class StreamDecoder:
    """Turns the lines of a UI message stream into chunk dicts, raising on an `error` chunk."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.done = False

    def feed(self, line: str) -> dict[str, Any] | None:
        """The chunk a `data:` line carries; None for other lines and for `[DONE]`, which sets `done`."""
        if not line.startswith("data:"):
            return None
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            raise DowncityError(self.status, INVALID_RESPONSE, f"stream chunk is not JSON: {data!r}") from None
        if not isinstance(chunk, dict):
            raise DowncityError(self.status, INVALID_RESPONSE, f"stream chunk is not an object: {data!r}")
        if chunk.get("type") == "error":
            raise self._error(chunk)
        return chunk

    def finish(self) -> None:
        """Check the stream ended with `[DONE]` rather than being cut off."""
        if not self.done:
            raise DowncityError(self.status, CONNECTION_ERROR, "stream ended before [DONE]")

    def _error(self, chunk: dict[str, Any]) -> DowncityError:
        text = str(chunk.get("errorText", "stream failed"))
        matched = _ERROR_TEXT.match(text)
        if matched is None:
            return DowncityError(self.status, "stream_error", text)
        return DowncityError(self.status, matched.group(1), matched.group(2))


def poll_wait(job: ImageJob, deadline: float, now: float) -> float:
    """Seconds to sleep before polling an unfinished job again; a `timeout` error past the deadline."""
    remaining = deadline - now
    if remaining <= 0:
        raise DowncityError(0, TIMEOUT, f"image job {job.job_id!r} is still {job.status!r} at the deadline")
    delay_ms = job.poll_after_ms if job.poll_after_ms is not None else DEFAULT_POLL_MS
    return min(delay_ms / 1000, remaining)
