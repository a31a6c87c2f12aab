"""The providers' pooled upstream HTTP client: httpx's API over aiohttp's connection pool.

httpcore's pool checks every pooled connection (a socket poll each) whenever a request starts or ends, so with
32 requests in flight it cost ~2.3 ms of CPU per request on the 2-core benchmark machine; aiohttp's pool
costs ~0.2 ms. Call sites keep httpx's API, errors and per-request timeouts, and any other httpx client
(a test's respx-mocked one, say) can still be passed to `ProviderRunner` instead.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import httpx


def _httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx error a caller of httpx expects for an aiohttp failure."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.ReadError(message, request=request)


class _ResponseBody(httpx.AsyncByteStream):
    """An aiohttp response body as httpx's stream; closing it early drops the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _httpx_error(exc, self._request) from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request through one aiohttp session (opened in the running loop)."""

    def __init__(self, *, max_connections: int, keepalive_s: float) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # HTTP(S)_PROXY and NO_PROXY, read once as httpx's own transport does; aiohttp's trust_env would read
        # them (and ~/.netrc) again on a worker thread for every request.
        self._proxies = urllib.request.getproxies_environment()

    def _proxy_for(self, url: httpx.URL) -> str | None:
        proxy = self._proxies.get(url.scheme)
        # A stdlib function typeshed leaves out: it applies NO_PROXY (`self._proxies["no"]`) to a host.
        if proxy is None or urllib.request.proxy_bypass_environment(url.host, self._proxies):  # type: ignore[attr-defined]
            return None
        return proxy

    def _open_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=self._keepalive_s)
            # httpx decodes Content-Encoding itself, so aiohttp must hand over the raw bytes.
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` with httpx's per-request timeouts; aiohttp failures become httpx errors."""
        timeout = request.extensions.get("timeout", {})
        body = await request.aread()
        try:
            response = await self._open_session().request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                proxy=self._proxy_for(request.url),
                timeout=aiohttp.ClientTimeout(
                    connect=timeout.get("pool"), sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _httpx_error(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        """Close the session and its pooled connections."""
        if self._session is not None and not self._session.closed and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None


def pooled_upstream_client(timeout_s: float, *, max_connections: int = 256) -> httpx.AsyncClient:
    """The httpx client a provider deployment shares across its upstream calls."""
    return httpx.AsyncClient(
        transport=AiohttpTransport(max_connections=max_connections, keepalive_s=30.0),
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
    )
