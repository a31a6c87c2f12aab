"""The one exception the clients raise: an HTTP error body, a connection failure or a timeout."""

from __future__ import annotations

from typing import Any

import httpx

CONNECTION_ERROR = "connection_error"
TIMEOUT = "timeout"
HTTP_ERROR = "http_error"
INVALID_RESPONSE = "invalid_response"
_MAX_TEXT_IN_MESSAGE = 200


class DowncityError(Exception):
    """A failed call: `status` is the HTTP status (0 when no response arrived), `type` is snake_case."""

    def __init__(self, status: int, type: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{type}: {message}")
        self.status = status
        self.type = type
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"DowncityError({self.status}, {self.type!r}, {self.message!r}, field={self.field!r})"


def error_from_body(status: int, body: Any) -> DowncityError | None:
    """The error a `{"error": {type, message, field?}}` body describes, or None for any other shape."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    error = body["error"]
    kind, message, field = error.get("type"), error.get("message"), error.get("field")
    if not isinstance(kind, str) or not isinstance(message, str):
        return None
    return DowncityError(status, kind, message, field if isinstance(field, str) else None)


def error_from_response(response: httpx.Response) -> DowncityError:
    """The error for a non-2xx response whose body has been read."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = error_from_body(response.status_code, body)
    if error is not None:
        return error
    text = response.text.strip()[:_MAX_TEXT_IN_MESSAGE] or response.reason_phrase
    return DowncityError(response.status_code, HTTP_ERROR, f"HTTP {response.status_code}: {text}")


def error_from_transport(exc: httpx.TransportError, attempts: int) -> DowncityError:
    """The error for a request that never got a complete response."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return DowncityError(0, TIMEOUT, f"request timed out: {type(exc).__name__}")
    tries = "attempt" if attempts == 1 else "attempts"
    return DowncityError(0, CONNECTION_ERROR, f"{type(exc).__name__} after {attempts} {tries}: {exc}")
