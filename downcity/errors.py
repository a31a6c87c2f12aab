"""The one error type the runtime raises for caller and upstream faults."""

from __future__ import annotations

from typing import Any


class DowncityHTTPError(Exception):
    """An error with an HTTP status, a snake_case type, a human message and an optional field."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.field = field
        # Sent with the error response, e.g. a rate limit's Retry-After.
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        """The JSON body every route returns for this error."""
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}

    def __reduce__(self) -> tuple[Any, ...]:
        return (DowncityHTTPError, (self.status, self.type, self.message, self.field, self.headers))

    def __repr__(self) -> str:
        return f"DowncityHTTPError({self.status}, {self.type!r}, {self.message!r}, field={self.field!r})"


def bad_request(message: str, field: str | None = None) -> DowncityHTTPError:
    """400 for a malformed request."""
    return DowncityHTTPError(400, "bad_request", message, field)


def invalid(message: str, field: str | None = None) -> DowncityHTTPError:
    """422 for a well-formed request with invalid values."""
    return DowncityHTTPError(422, "invalid_request", message, field)


def unauthorized(message: str) -> DowncityHTTPError:
    """401 for a missing or bad credential."""
    return DowncityHTTPError(401, "unauthorized", message)


def forbidden(message: str) -> DowncityHTTPError:
    """403 for a valid credential without the right."""
    return DowncityHTTPError(403, "forbidden", message)


def not_found(message: str) -> DowncityHTTPError:
    """404 for something the caller cannot see."""
    return DowncityHTTPError(404, "not_found", message)


def conflict(message: str) -> DowncityHTTPError:
    """409 for an idempotency key reused with different parameters."""
    return DowncityHTTPError(409, "idempotency_conflict", message)


def insufficient_balance(message: str) -> DowncityHTTPError:
    """402 when the balance cannot cover a call."""
    return DowncityHTTPError(402, "insufficient_balance", message)


def upstream_error(message: str) -> DowncityHTTPError:
    """502 for an upstream failure or malformed upstream response."""
    return DowncityHTTPError(502, "upstream_error", message)


def upstream_timeout(message: str) -> DowncityHTTPError:
    """504 when the upstream did not answer in time."""
    return DowncityHTTPError(504, "upstream_timeout", message)
