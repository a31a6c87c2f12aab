"""The aiohttp-backed httpx client provider deployments use, against the real demo upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from downcity.gateway.upstream_http import pooled_upstream_client
from tests.conftest import listen_port

HEADERS = {"Authorization": "Bearer demo-key"}


def _chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "demo", "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with pooled_upstream_client(timeout_s=10.0) as http:
        yield http


async def test_posts_json_and_reads_the_json_answer(client: httpx.AsyncClient, demo_upstream: str) -> None:
    response = await client.post(f"{demo_upstream}/chat/completions", json=_chat("hello"), headers=HEADERS)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["choices"][0]["message"]["content"] == "Echo: hello"
    assert response.json()["usage"]["prompt_tokens"] == 1


async def test_upstream_error_statuses_come_back_as_responses(client: httpx.AsyncClient, demo_upstream: str) -> None:
    response = await client.post(f"{demo_upstream}/chat/completions", json=_chat("x [[fail:503]]"), headers=HEADERS)

    assert response.status_code == 503
    assert response.json()["error"] == {
        "type": "server_error",
        "code": "demo_fault",
        "message": "demo upstream: injected failure with HTTP 503",
        "param": None,
    }


async def test_streams_server_sent_events_as_they_arrive(client: httpx.AsyncClient, demo_upstream: str) -> None:
    body = _chat("one two three", stream=True)
    async with client.stream("POST", f"{demo_upstream}/chat/completions", json=body, headers=HEADERS) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]

    assert response.status_code == 200
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    deltas = [chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk.get("choices")]
    assert "".join(deltas) == "Echo: one two three"


async def test_a_stream_closed_early_leaves_the_client_usable(client: httpx.AsyncClient, demo_upstream: str) -> None:
    body = _chat("one two three", stream=True)
    async with client.stream("POST", f"{demo_upstream}/chat/completions", json=body, headers=HEADERS) as response:
        async for _ in response.aiter_bytes():
            break

    again = await client.post(f"{demo_upstream}/chat/completions", json=_chat("again"), headers=HEADERS)
    assert again.json()["choices"][0]["message"]["content"] == "Echo: again"


async def test_a_slow_answer_raises_httpx_read_timeout(demo_upstream: str) -> None:
    async with pooled_upstream_client(timeout_s=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"{demo_upstream}/chat/completions", json=_chat("x [[sleep:2000]]"), headers=HEADERS)


async def test_a_refused_connection_raises_httpx_connect_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{listen_port()}/v1/chat/completions", json=_chat("x"))


async def test_a_dropped_stream_raises_an_httpx_transport_error(client: httpx.AsyncClient, demo_upstream: str) -> None:
    body = _chat("one two three four five six [[drop]]", stream=True)
    with pytest.raises(httpx.TransportError):
        async with client.stream("POST", f"{demo_upstream}/chat/completions", json=body, headers=HEADERS) as response:
            async for _ in response.aiter_bytes():
                pass


async def test_requests_go_through_the_proxy_named_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    request_lines: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_lines.append(await reader.readline())
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"via": "proxy"}'
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with server, pooled_upstream_client(timeout_s=5.0) as http:
        response = await http.get("http://upstream.example/v1/models")

    assert response.json() == {"via": "proxy"}
    assert request_lines == [b"GET http://upstream.example/v1/models HTTP/1.1\r\n"]


async def test_hosts_in_no_proxy_are_reached_directly(monkeypatch: pytest.MonkeyPatch, demo_upstream: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{listen_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with pooled_upstream_client(timeout_s=5.0) as http:
        response = await http.post(f"{demo_upstream}/chat/completions", json=_chat("direct"), headers=HEADERS)

    assert response.json()["choices"][0]["message"]["content"] == "Echo: direct"
