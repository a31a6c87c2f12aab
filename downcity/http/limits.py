"""An ASGI middleware that refuses oversized bodies with 413 before any route reads them, and its helpers."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from downcity.errors import DowncityHTTPError


class BodyTooLarge(Exception):
    """A body that grew past the cap while it was being read."""


async def read_body(receive: Receive, max_bytes: int | None = None) -> bytes | None:
    """The whole request body, None when the client disconnected first; `BodyTooLarge` past `max_bytes`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands out `body` once, then defers to the real one (for disconnects)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def send_error(send: Send, error: DowncityHTTPError) -> None:
    """Answer with the one JSON error body, from a middleware (outside FastAPI's handlers)."""
    payload = json.dumps(error.to_body(), ensure_ascii=False, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodySizeLimit:
    """Reject requests whose body exceeds `max_bytes`, judged by header or, for chunked bodies, by reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    await self._reject(send)
                    return
                await self.app(scope, receive, send)
                return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): buffer up to the cap so the route never sees a partial body.
        try:
            body = await read_body(receive, self.max_bytes)
        except BodyTooLarge:
            await self._reject(send)
            return
        if body is not None:
            await self.app(scope, replaying(body, receive), send)

    async def _reject(self, send: Send) -> None:
        message = f"request body exceeds {self.max_bytes} bytes"
        await send_error(send, DowncityHTTPError(413, "payload_too_large", message))
