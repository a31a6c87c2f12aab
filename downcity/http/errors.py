"""Every failure leaves the app as one JSON error shape; nothing escapes as an HTML 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from downcity.errors import DowncityHTTPError

logger = logging.getLogger("downcity.http")

_STATUS_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(error: DowncityHTTPError) -> JSONResponse:
    """The JSON response for a DowncityHTTPError."""
    return JSONResponse(error.to_body(), status_code=error.status)


def _field_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> DowncityHTTPError:
    """Map pydantic's validation errors to one 400/422 naming the first bad field."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    if first.get("type") == "json_invalid":
        return DowncityHTTPError(400, "malformed_json", "request body is not valid JSON")
    field = _field_of(tuple(first.get("loc", ())))
    if first.get("type") == "model_attributes_type" or (field is None and first.get("type") == "dict_type"):
        return DowncityHTTPError(422, "invalid_request", "request body must be a JSON object")
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        message = "field required"
    if field:
        message = f"{field}: {message}"
    return DowncityHTTPError(422, "invalid_request", message, field)


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so every error body is `{"error": {type, message, field?}}`."""

    async def on_downcity(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DowncityHTTPError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = _STATUS_TYPES.get(exc.status_code, "http_error")
        return error_response(DowncityHTTPError(exc.status_code, kind, str(exc.detail)))

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled %s in request", type(exc).__name__)
        return error_response(DowncityHTTPError(500, "internal_error", "internal error"))

    app.add_exception_handler(DowncityHTTPError, on_downcity)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
