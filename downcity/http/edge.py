"""The edge rule every request meets before any route runs: strings and JSON values a database can store.

One ASGI middleware checks the query string, the headers the app reads and a JSON body, and answers 422
naming the first bad field: no U+0000, no lone surrogate (neither survives PostgreSQL `text` or `jsonb`),
no NaN or ±Infinity, integers within a signed 64-bit range, and nesting at most `MAX_JSON_DEPTH` deep.
"""

from __future__ import annotations

import json
import math
import re
from email.message import Message as MimeMessage
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from downcity.errors import DowncityHTTPError, invalid
from downcity.http.limits import read_body, replaying, send_error

MAX_JSON_DEPTH = 64
MAX_JSON_INT = 2**63 - 1
MIN_JSON_INT = -(2**63)
# The request headers some route or dependency reads, by their lower-case wire name.
READ_HEADERS = {b"authorization": "Authorization", b"x-city-id": "X-City-Id", b"idempotency-key": "Idempotency-Key"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: str, field: str) -> None:
    """422 when `value` holds U+0000 or a lone surrogate."""
    if "\x00" in value:
        raise invalid(f"{field}: must not contain U+0000", field)
    if _SURROGATE.search(value):
        raise invalid(f"{field}: must not contain a lone surrogate", field)


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def check_json(value: Any, path: str = "", depth: int = 1) -> None:
    """422 naming the first value under `path` that breaks the edge rule."""
    field = path or "body"
    if depth > MAX_JSON_DEPTH:
        raise invalid(f"{field}: JSON nesting exceeds {MAX_JSON_DEPTH} levels", field)
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise invalid(f"{field}: numbers must be finite (no NaN or Infinity)", field)
    elif isinstance(value, int) and not isinstance(value, bool):
        if not MIN_JSON_INT <= value <= MAX_JSON_INT:
            raise invalid(f"{field}: integers must fit in a signed 64-bit integer", field)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json(item, _child(path, index), depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"{field} (a key)")
            check_json(item, _child(path, key), depth + 1)


def parse_json_body(body: bytes) -> Any:
    """The decoded body, checked by `check_json`; 400 when it is not JSON."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise invalid(f"body: JSON nesting exceeds {MAX_JSON_DEPTH} levels", "body") from None
    except ValueError:
        raise DowncityHTTPError(400, "malformed_json", "request body is not valid JSON") from None
    check_json(value)
    return value


def is_json(content_type: str | None) -> bool:
    """Whether FastAPI decodes a body with this content type as JSON (with none, it does not)."""
    if not content_type:
        return False
    mime = MimeMessage()
    mime["content-type"] = content_type
    subtype = mime.get_content_subtype()
    return mime.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def check_query(query_string: bytes) -> None:
    """422 naming the first query parameter whose name or value breaks the rule."""
    # Decoded as Starlette decodes it, so the check sees what routes see.
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        check_text(name, "query")
        check_text(value, name)


def check_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """422 for a NUL in a header the app reads; returns the content type."""
    content_type = None
    for name, value in headers:
        if name == b"content-type":
            content_type = value.decode("latin-1")
        label = READ_HEADERS.get(name)
        if label is not None and b"\x00" in value:
            raise invalid(f"{label}: must not contain U+0000", label)
    return content_type


class EdgeRules:
    """Refuse requests breaking the edge rule with one error body, before any route or dependency runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_query(scope.get("query_string", b""))
            json_body = is_json(check_headers(scope.get("headers", [])))
        except DowncityHTTPError as error:
            await send_error(send, error)
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS") or not json_body:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return
        if body:
            try:
                parse_json_body(body)
            except DowncityHTTPError as error:
                await send_error(send, error)
                return
        await self.app(scope, replaying(body, receive), send)
