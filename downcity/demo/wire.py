"""Wire helpers shared by the demo routes: JSON bodies, bearer keys, OpenAI-style errors, fault markers."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from downcity.errors import DowncityHTTPError, bad_request, unauthorized

_MARKER = re.compile(r"\[\[([a-z-]+)(?::(\d+))?\]\]")

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def dumps(payload: Any) -> bytes:
    """Compact UTF-8 JSON, the encoding of every demo response."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(payload: Any, status: int = 200) -> Response:
    """A JSON response without Starlette's content negotiation overhead."""
    return Response(dumps(payload), status_code=status, media_type="application/json")


def openai_error_type(status: int) -> str:
    """The OpenAI `error.type` an upstream answers with for an HTTP status."""
    return _OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_response(status: int, code: str, message: str, param: str | None = None) -> Response:
    """An OpenAI-shaped error: the Downcity snake_case type travels as `code`, the field as `param`."""
    error = {"message": message, "type": openai_error_type(status), "param": param, "code": code}
    return json_response({"error": error}, status)


async def handle_downcity_error(_request: Request, exc: Exception) -> Response:
    """Render a DowncityHTTPError raised by a demo route."""
    assert isinstance(exc, DowncityHTTPError)
    return error_response(exc.status, exc.type, exc.message, exc.field)


async def handle_http_exception(_request: Request, exc: Exception) -> Response:
    """Render Starlette's routing errors (unknown path, wrong method) as JSON too."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return error_response(exc.status_code, code, exc.detail)


def bearer_key(request: Request) -> str:
    """The caller's bearer key; any non-empty key is accepted."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    return key


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise bad_request("request body must be valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", field="body")
    return body


def required_str(body: dict[str, Any], field: str) -> str:
    """A non-empty string field of a request body."""
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise bad_request(f"'{field}' must be a non-empty string", field=field)
    return value


def markers(text: str) -> dict[str, int | None]:
    """Fault-injection markers such as `[[fail:503]]` or `[[drop]]` found in a text, by name."""
    if "[[" not in text:
        return {}
    return {name: int(value) if value else None for name, value in _MARKER.findall(text)}
