"""The byte relay between the ingress and a provider replica, on real sockets: answers, errors, streams, the token,
a caller leaving, a replica dying mid-answer, a replica gone before the call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest

from downcity.ai.context import CityInfo, UserInfo
from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import ActionRequest, OpenAIOutcome, TextOutcome
from downcity.gateway.relay import TOKEN_HEADER, Endpoint, RelayClient, RelayServer
from downcity.gateway.runner import ProviderRunner
from downcity.types import UIMessage, Usage

TOKEN = "relay-token"
DEADLINE_S = 30


def request(text: str = "hello") -> ActionRequest:
    return ActionRequest(
        request_id="req-1",
        pathway="text",
        model_id="demo-chat",
        input={"messages": [{"role": "user", "content": text}]},
        user=UserInfo(user_id="alice"),
        city=CityInfo(city_id="kids"),
        locals={"seen_by_hook": {1, 2}},
    )


class FakeRunner:
    """A provider runner whose actions the tests script; it records what reached it."""

    def __init__(self) -> None:
        self.received: list[ActionRequest] = []
        self.failure: Exception | None = None
        self.stream_left = asyncio.Event()
        self.hold_stream = asyncio.Event()

    async def text(self, req: ActionRequest) -> TextOutcome:
        self.received.append(req)
        if self.failure is not None:
            raise self.failure
        return TextOutcome(
            output=UIMessage(id="m1", role="assistant", parts=[{"type": "text", "text": "hi"}]),
            usage=Usage(input_tokens=3, output_tokens=2),
            ttfb_ms=7,
        )

    async def openai(self, req: ActionRequest) -> OpenAIOutcome:
        self.received.append(req)
        return OpenAIOutcome(body={"id": "chatcmpl-1"}, usage=Usage(input_tokens=1, output_tokens=1))

    async def stream(self, req: ActionRequest) -> AsyncIterator[list[dict[str, Any]]]:
        self.received.append(req)
        try:
            yield [{"type": "text-delta", "delta": "a"}]
            yield [{"type": "text-delta", "delta": "b"}, {"type": "finish"}]
            await self.hold_stream.wait()
            if self.failure is not None:
                raise self.failure
        finally:
            self.stream_left.set()

    async def openai_stream(self, req: ActionRequest) -> AsyncIterator[bytes | dict[str, Any]]:
        self.received.append(req)
        yield b'data: {"choices": []}\n\n'
        yield b"data: [DONE]\n\n"
        yield {"usage": {"prompt_tokens": 1}}


@pytest.fixture
async def relay() -> AsyncIterator[tuple[FakeRunner, RelayServer, RelayClient]]:
    runner = FakeRunner()
    server = RelayServer(cast(ProviderRunner, runner), TOKEN)
    port = await server.start("127.0.0.1")

    async def pick(provider_id: str) -> Endpoint:
        assert provider_id == "demo"
        return "127.0.0.1", port

    client = RelayClient(pick, TOKEN)
    yield runner, server, client
    await client.aclose()
    await server.close()


async def test_a_text_call_crosses_the_relay_unchanged(relay: tuple[FakeRunner, RelayServer, RelayClient]) -> None:
    runner, _, client = relay
    outcome = await client.text("demo", request())
    assert outcome == await runner.text(request())
    # Pickled, not JSON: what a hook left in `locals` arrives as it was (a set stays a set).
    assert runner.received[0] == request()
    assert runner.received[0].locals == {"seen_by_hook": {1, 2}}
    assert (await client.openai("demo", request())).body == {"id": "chatcmpl-1"}


async def test_the_actions_own_error_reaches_the_caller_whole(
    relay: tuple[FakeRunner, RelayServer, RelayClient],
) -> None:
    runner, _, client = relay
    runner.failure = DowncityHTTPError(
        429, "upstream_rate_limited", "slow down", "model", headers={"retry-after": "2"}, detail={"status": 429}
    )
    with pytest.raises(DowncityHTTPError) as raised:
        await client.text("demo", request())
    error = raised.value
    assert (error.status, error.type, error.message, error.field) == (
        429,
        "upstream_rate_limited",
        "slow down",
        "model",
    )
    assert (error.headers, error.detail) == ({"retry-after": "2"}, {"status": 429})


async def test_any_other_failure_is_a_502_naming_its_type(relay: tuple[FakeRunner, RelayServer, RelayClient]) -> None:
    runner, _, client = relay
    runner.failure = RuntimeError("secret upstream detail")
    with pytest.raises(DowncityHTTPError) as raised:
        await client.text("demo", request())
    assert (raised.value.status, raised.value.type, raised.value.message) == (
        502,
        "provider_unavailable",
        "provider deployment failed: RuntimeError",
    )


async def test_a_caller_without_the_token_runs_nothing(relay: tuple[FakeRunner, RelayServer, RelayClient]) -> None:
    runner, server, _ = relay
    for token in ("wrong", ""):
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{server.port}/text", data=b"not a pickle", headers={TOKEN_HEADER: token}
            ) as response,
        ):
            assert response.status == 401
            assert await response.json() == {"error": {"type": "unauthorized", "message": "bad relay token"}}
    stranger = RelayClient(lambda provider_id: _endpoint(server), "wrong")
    with pytest.raises(DowncityHTTPError) as raised:
        await stranger.text("demo", request())
    await stranger.aclose()
    assert (raised.value.status, raised.value.message) == (502, "provider relay answered 401")
    assert runner.received == []


async def _endpoint(server: RelayServer) -> Endpoint:
    return "127.0.0.1", server.port


async def test_an_unknown_action_is_a_404(relay: tuple[FakeRunner, RelayServer, RelayClient]) -> None:
    _, server, _ = relay
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{server.port}/aclose", headers={TOKEN_HEADER: TOKEN}) as response,
    ):
        assert response.status == 404
        assert (await response.json())["error"] == {"type": "not_found", "message": "no action 'aclose'"}


async def test_streams_arrive_in_order_with_bytes_kept_as_bytes(
    relay: tuple[FakeRunner, RelayServer, RelayClient],
) -> None:
    runner, _, client = relay
    runner.hold_stream.set()
    batches = [batch async for batch in client.stream("demo", request())]
    assert batches == [
        [{"type": "text-delta", "delta": "a"}],
        [{"type": "text-delta", "delta": "b"}, {"type": "finish"}],
    ]
    items = [item async for item in client.openai_stream("demo", request())]
    assert items == [b'data: {"choices": []}\n\n', b"data: [DONE]\n\n", {"usage": {"prompt_tokens": 1}}]


async def test_an_error_after_a_streams_first_batches_ends_it_with_that_error(
    relay: tuple[FakeRunner, RelayServer, RelayClient],
) -> None:
    runner, _, client = relay
    runner.failure = DowncityHTTPError(502, "upstream_error", "cut")
    runner.hold_stream.set()
    seen: list[list[dict[str, Any]]] = []
    with pytest.raises(DowncityHTTPError) as raised:
        async for batch in client.stream("demo", request()):
            seen.append(batch)
    assert len(seen) == 2
    assert (raised.value.status, raised.value.type, raised.value.message) == (502, "upstream_error", "cut")


async def test_a_caller_leaving_a_stream_cancels_the_action(relay: tuple[FakeRunner, RelayServer, RelayClient]) -> None:
    runner, _, client = relay
    batches = client.stream("demo", request())
    assert await anext(batches) == [{"type": "text-delta", "delta": "a"}]
    await batches.aclose()  # type: ignore[attr-defined]
    # The action was held open (hold_stream is never set): only the cancellation ends it.
    await asyncio.wait_for(runner.stream_left.wait(), DEADLINE_S)
    assert not runner.hold_stream.is_set()


async def _dying_replica(answer: bytes) -> tuple[asyncio.Server, int]:
    """A replica that answers 200, writes `answer` and drops the connection (a process killed mid-answer)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n" + answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("cut_after", [0, 3, 9], ids=["nothing", "half-a-header", "half-a-payload"])
async def test_a_replica_dying_mid_answer_is_a_502_never_a_short_success(cut_after: int) -> None:
    from downcity.gateway.relay import VALUE, frame

    whole = frame(VALUE, b"\x80\x05" + b"x" * 20)
    server, port = await _dying_replica(whole[:cut_after])

    async def pick(provider_id: str) -> Endpoint:
        return "127.0.0.1", port

    client = RelayClient(pick, TOKEN)
    try:
        with pytest.raises(DowncityHTTPError) as raised:
            await client.text("demo", request())
        assert raised.value.status == 502 and raised.value.type == "provider_unavailable"
        with pytest.raises(DowncityHTTPError) as cut:
            [batch async for batch in client.stream("demo", request())]
        assert cut.value.status == 502 and cut.value.type == "provider_unavailable"
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_a_stream_whose_replica_dies_after_whole_batches_is_a_502() -> None:
    import pickle

    from downcity.gateway.relay import VALUE, frame

    server, port = await _dying_replica(frame(VALUE, pickle.dumps([{"type": "text-delta", "delta": "a"}])))

    async def pick(provider_id: str) -> Endpoint:
        return "127.0.0.1", port

    client = RelayClient(pick, TOKEN)
    seen: list[list[dict[str, Any]]] = []
    try:
        with pytest.raises(DowncityHTTPError) as raised:
            async for batch in client.stream("demo", request()):
                seen.append(batch)
        assert seen == [[{"type": "text-delta", "delta": "a"}]]
        assert raised.value.message == "provider replica closed its answer before the end"
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_a_replica_gone_before_the_call_is_picked_around_once(
    relay: tuple[FakeRunner, RelayServer, RelayClient],
) -> None:
    runner, server, _ = relay
    gone = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = gone.sockets[0].getsockname()[1]
    gone.close()
    await gone.wait_closed()
    picks: list[int] = []

    async def pick(provider_id: str) -> Endpoint:
        port = dead_port if not picks else server.port
        picks.append(port)
        return "127.0.0.1", port

    client = RelayClient(pick, TOKEN)
    try:
        assert (await client.text("demo", request())).ttfb_ms == 7
        assert picks == [dead_port, server.port]
        assert len(runner.received) == 1

        async def always_gone(provider_id: str) -> Endpoint:
            return "127.0.0.1", dead_port

        lost = RelayClient(always_gone, TOKEN)
        with pytest.raises(DowncityHTTPError) as raised:
            await lost.text("demo", request())
        await lost.aclose()
        assert (raised.value.status, raised.value.message) == (
            502,
            f"provider 'demo' relay at 127.0.0.1:{dead_port} refused",
        )
    finally:
        await client.aclose()
