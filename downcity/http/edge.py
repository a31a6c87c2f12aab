"""The edge rule every request meets before any route runs: strings and JSON values a database can store.

One ASGI middleware checks the query string, the headers the app reads and a JSON body against
`downcity.store.values`, and answers 422 naming the first bad field, before any dependency, route,
upstream call or write.
"""

from __future__ import annotations

import json
from email.message import Message as MimeMessage
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from downcity.errors import DowncityHTTPError, invalid
from downcity.http.limits import read_body, replaying, send_error
from downcity.store.values import MAX_JSON_DEPTH, check_json, check_text

# The request headers some route or dependency reads, by their lower-case wire name.
READ_HEADERS = {b"authorization": "Authorization", b"x-city-id": "X-City-Id", b"idempotency-key": "Idempotency-Key"}


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
