"""Every failure leaves the app as one JSON error shape; nothing escapes as an HTML 500."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from downcity.errors import DowncityHTTPError
from downcity.secrets import SCRUBBER

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
    """The JSON response for a DowncityHTTPError, with every configured secret value scrubbed out."""
    body = error.to_body()
    for key in ("message", "field"):
        if key in body["error"]:
            body["error"][key] = SCRUBBER.scrub(body["error"][key])
    return JSONResponse(body, status_code=error.status, headers=error.headers or None)


_SOURCES = ("body", "query", "header", "path")
_TAG_ERRORS = ("union_tag_invalid", "union_tag_not_found")


def field_path(loc: Sequence[Any], data: Any, error_type: str = "") -> str | None:
    """The field a pydantic error is about, like `messages[0].content`, read against the request data.

    Pydantic's location also names union members and tags (`messages.0.user.content`); walking it along the
    data keeps only the keys and indexes that exist there, plus the one a `missing` error names.
    """
    parts = list(loc)
    if parts and parts[0] in _SOURCES:
        source = parts.pop(0)
        if source != "body":
            data = None
    path = ""
    for position, part in enumerate(parts):
        if isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
            path, data = f"{path}[{part}]", data[part]
        elif isinstance(part, str) and isinstance(data, dict) and part in data:
            path, data = (f"{path}.{part}" if path else part), data[part]
        elif data is None or (position == len(parts) - 1 and error_type == "missing"):
            path, data = (f"{path}.{part}" if path else str(part)), None
    return path or None


def _tag_field(path: str | None, ctx: dict[str, Any]) -> str | None:
    discriminator = str(ctx.get("discriminator", "")).strip("'")
    if not discriminator.isidentifier():
        return path
    return f"{path}.{discriminator}" if path else discriminator


def _message(kind: str, raw: str, ctx: dict[str, Any]) -> str:
    if kind == "missing" or kind == "union_tag_not_found":
        return "field required"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags', '')}"
    return raw.removeprefix("Value error, ")


def validation_error(exc: RequestValidationError) -> DowncityHTTPError:
    """Map pydantic's validation errors to one 400/422 naming the most specific bad field."""
    errors = exc.errors() or [{"loc": (), "msg": "invalid request", "type": "value_error"}]
    if any(error.get("type") == "json_invalid" for error in errors):
        return DowncityHTTPError(400, "malformed_json", "request body is not valid JSON")
    body = getattr(exc, "body", None)
    located = [(field_path(tuple(e.get("loc", ())), body, str(e.get("type", ""))), e) for e in errors]
    # Union members each report an error; the one that got deepest into the data is the one the caller meant.
    field, first = max(located, key=lambda pair: len(pair[0] or ""))
    kind = str(first.get("type", ""))
    if field is None and kind in ("model_attributes_type", "dict_type"):
        return DowncityHTTPError(422, "invalid_request", "request body must be a JSON object")
    ctx = first.get("ctx") or {}
    if kind in _TAG_ERRORS:
        field = _tag_field(field, ctx)
        message = _message(kind, str(first.get("msg", "")), ctx)
    else:
        # Alternatives of one union fail at the same place: name them all (`a valid string or a valid list`).
        alternatives = [_message(str(e.get("type", "")), str(e.get("msg", "")), ctx) for f, e in located if f == field]
        message = " or ".join(dict.fromkeys(alternatives))
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
