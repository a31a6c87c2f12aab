"""The one error type the runtime raises for caller and upstream faults."""

from __future__ import annotations

from typing import Any


class DowncityHTTPError(Exception):
    """An error with an HTTP status, a snake_case type, a human message and an optional field.

    `headers` go out with the error response (a rate limit's Retry-After); `detail` is for the runtime only (the
    upstream's status, the attempts a call made), never in a response.
    """

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        field: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.detail: dict[str, Any] = dict(detail) if detail else {}

    def to_body(self) -> dict[str, Any]:
        """The JSON body every route returns for this error."""
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.status, self.type, self.message, self.field, self.headers, self.detail))

    def __repr__(self) -> str:
        return f"DowncityHTTPError({self.status}, {self.type!r}, {self.message!r}, field={self.field!r})"


def _rebuild(
    status: int, type: str, message: str, field: str | None, headers: dict[str, str], detail: dict[str, Any]
) -> DowncityHTTPError:
    """Unpickle an error (its headers and detail are keyword-only)."""
    return DowncityHTTPError(status, type, message, field, headers=headers, detail=detail)


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


def upstream_timeout(message: str, timeout: str | None = None) -> DowncityHTTPError:
    """504 when the upstream did not answer in time; `timeout` names the one that fired (``connect``, …)."""
    return DowncityHTTPError(504, "upstream_timeout", message, detail={"timeout": timeout} if timeout else None)
