"""The provider hop as bytes: a provider replica's relay server and the ingress's pooled client for it.

The pattern of Ray Serve LLM's byte relay (`ray/llm/_internal/serve/core/ingress/`): the caller picks a replica
(on Ray, through the deployment handle's router) and speaks HTTP/1.1 to it over pooled keep-alive connections,
instead of a Serve handle call with its Ray task machinery. Each request is `POST /<action>` with a pickled
`ActionRequest` and the relay token; each answer is a run of frames, a kind byte and a 4-byte big-endian length
before each payload:

- `V` one pickled value (an outcome, a stream's batch or usage dict), `B` raw bytes of an OpenAI stream;
- `E` a pickled `DowncityHTTPError` the action raised, after which nothing follows;
- `Z` the end: a body that ends without it (a replica that died mid-answer) is a 502, never a short success.

Writes wait for the socket to drain, so a slow caller slows the upstream read; a caller that closes the
connection cancels the action (the server runs with aiohttp's handler cancellation). The token is checked before
anything is unpickled: the port only runs actions for a caller that holds it.
"""

from __future__ import annotations

import asyncio
import hmac
import pickle
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

import aiohttp
from aiohttp import web

from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import ActionRequest, OpenAIOutcome, TextOutcome, VideoOutcome
from downcity.gateway.runner import ProviderRunner
from downcity.types import ImageJobResult

__all__ = ["Endpoint", "RelayClient", "RelayServer", "pick_error"]

HEADER = struct.Struct(">cI")
VALUE, BYTES, ERROR, END = b"V", b"B", b"E", b"Z"
TOKEN_HEADER = "x-downcity-relay-token"
UNARY = ("text", "openai", "image_create", "image_fetch", "video")
STREAMS = ("stream", "openai_stream")

Endpoint = tuple[str, int]


def frame(kind: bytes, payload: bytes) -> bytes:
    """One frame: its kind, its length, its payload."""
    return HEADER.pack(kind, len(payload)) + payload


def provider_error(message: str) -> DowncityHTTPError:
    """What the caller sees when a provider replica could not answer (as the handle path reports it)."""
    return DowncityHTTPError(502, "provider_unavailable", message)


def pick_error(error: BaseException) -> DowncityHTTPError:
    """The error a caller sees for one an action raised: its own DowncityHTTPError, else a 502 naming its type."""
    if isinstance(error, DowncityHTTPError):
        return error
    return provider_error(f"provider deployment failed: {type(error).__name__}")


class RelayServer:
    """Serves one `ProviderRunner`'s actions on a port of its own, to callers holding `token`."""

    def __init__(self, runner: ProviderRunner, token: str) -> None:
        self._runner = runner
        self._token = token.encode()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{action}", self._serve)
        self._app_runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        self.port = 0

    async def start(self, host: str = "0.0.0.0") -> int:
        """Listen on a free port of `host`; returns the port."""
        await self._app_runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._app_runner, sock).start()
        return self.port

    async def close(self) -> None:
        """Stop listening and cancel the actions still running."""
        await self._app_runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, "").encode(), self._token):
            return web.json_response({"error": {"type": "unauthorized", "message": "bad relay token"}}, status=401)
        action = request.match_info["action"]
        if action not in UNARY and action not in STREAMS:
            return web.json_response({"error": {"type": "not_found", "message": f"no action {action!r}"}}, status=404)
        req = cast(ActionRequest, pickle.loads(await request.read()))
        response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
        await response.prepare(request)
        try:
            if action in UNARY:
                method = cast(Callable[[ActionRequest], Awaitable[Any]], getattr(self._runner, action))
                await response.write(frame(VALUE, pickle.dumps(await method(req), pickle.HIGHEST_PROTOCOL)))
            else:
                items = cast(Callable[[ActionRequest], AsyncIterator[Any]], getattr(self._runner, action))(req)
                async for item in items:
                    if isinstance(item, bytes):
                        await response.write(frame(BYTES, item))
                    else:
                        await response.write(frame(VALUE, pickle.dumps(item, pickle.HIGHEST_PROTOCOL)))
        except ConnectionError:
            # The caller went away mid-answer: nobody is left to tell.
            return response
        except Exception as error:
            await response.write(frame(ERROR, pickle.dumps(pick_error(error), pickle.HIGHEST_PROTOCOL)))
        else:
            await response.write(frame(END, b""))
        await response.write_eof()
        return response


class EndpointPicker(Protocol):
    """Which relay endpoint serves the next call of a provider (on Ray, the handle's router picks)."""

    async def __call__(self, provider_id: str) -> Endpoint: ...


async def _frames(content: aiohttp.StreamReader) -> AsyncIterator[tuple[bytes, bytes]]:
    """The frames of one answer, up to and including its end; a short body is a 502."""
    while True:
        try:
            kind, length = HEADER.unpack(await content.readexactly(HEADER.size))
            payload = await content.readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            raise provider_error("provider replica closed its answer before the end") from None
        yield kind, payload
        if kind in (END, ERROR):
            return


class RelayClient:
    """A `ProviderGateway` over relay servers: one pooled aiohttp session, endpoints chosen by `pick`."""

    def __init__(self, pick: EndpointPicker, token: str, *, max_connections: int = 1024) -> None:
        self._pick = pick
        self._headers = {TOKEN_HEADER: token, "content-type": "application/octet-stream"}
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def _open(self, provider_id: str, action: str, req: ActionRequest) -> aiohttp.ClientResponse:
        body = pickle.dumps(req, pickle.HIGHEST_PROTOCOL)
        # A replica that went away before taking the request (its port closed) got none of it: pick again once.
        for attempt in (1, 2):
            host, port = await self._pick(provider_id)
            try:
                response = await self._client().post(f"http://{host}:{port}/{action}", data=body, headers=self._headers)
            except aiohttp.ClientConnectorError:
                if attempt == 2:
                    raise provider_error(f"provider {provider_id!r} relay at {host}:{port} refused") from None
                continue
            except aiohttp.ClientError as error:
                raise provider_error(f"provider relay failed: {type(error).__name__}") from None
            if response.status != 200:
                response.close()
                raise provider_error(f"provider relay answered {response.status}")
            return response
        raise AssertionError("unreachable")

    async def _unary(self, provider_id: str, action: str, req: ActionRequest) -> Any:
        response = await self._open(provider_id, action, req)
        values: list[Any] = []
        try:
            async for kind, payload in _frames(response.content):
                if kind == ERROR:
                    raise cast(DowncityHTTPError, pickle.loads(payload))
                if kind == VALUE:
                    values.append(pickle.loads(payload))
            if len(values) != 1:
                raise provider_error(f"provider replica answered {len(values)} values, not one")
            return values[0]
        except aiohttp.ClientError as error:
            raise provider_error(f"provider relay failed: {type(error).__name__}") from None
        finally:
            response.release()

    async def _stream(self, provider_id: str, action: str, req: ActionRequest) -> AsyncIterator[Any]:
        response = await self._open(provider_id, action, req)
        ended = False
        try:
            async for kind, payload in _frames(response.content):
                if kind == ERROR:
                    raise cast(DowncityHTTPError, pickle.loads(payload))
                if kind == END:
                    ended = True
                    return
                yield payload if kind == BYTES else pickle.loads(payload)
        except aiohttp.ClientError as error:
            raise provider_error(f"provider relay failed: {type(error).__name__}") from None
        finally:
            # Closing a stream the caller left early drops the connection, which cancels the action upstream.
            if ended:
                response.release()
            else:
                response.close()

    async def text(self, provider_id: str, req: ActionRequest) -> TextOutcome:
        """Run the provider's text action on a replica picked for it."""
        return cast(TextOutcome, await self._unary(provider_id, "text", req))

    def stream(self, provider_id: str, req: ActionRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """Stream batches; closing this closes the connection, which cancels the upstream call."""
        return cast(AsyncIterator[list[dict[str, Any]]], self._stream(provider_id, "stream", req))

    async def openai(self, provider_id: str, req: ActionRequest) -> OpenAIOutcome:
        """Non-streaming chat/completions."""
        return cast(OpenAIOutcome, await self._unary(provider_id, "openai", req))

    def openai_stream(self, provider_id: str, req: ActionRequest) -> AsyncIterator[bytes | dict[str, Any]]:
        """Streaming chat/completions: raw upstream SSE bytes, then one usage dict."""
        return cast(AsyncIterator[bytes | dict[str, Any]], self._stream(provider_id, "openai_stream", req))

    async def image_create(self, provider_id: str, req: ActionRequest) -> ImageJobResult:
        """Create an upstream image job."""
        return cast(ImageJobResult, await self._unary(provider_id, "image_create", req))

    async def image_fetch(self, provider_id: str, req: ActionRequest) -> ImageJobResult:
        """Poll an upstream image job."""
        return cast(ImageJobResult, await self._unary(provider_id, "image_fetch", req))

    async def video(self, provider_id: str, req: ActionRequest) -> VideoOutcome:
        """Run the provider's video action."""
        return cast(VideoOutcome, await self._unary(provider_id, "video", req))

    async def aclose(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()
