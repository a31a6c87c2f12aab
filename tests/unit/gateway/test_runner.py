"""ProviderRunner against a faked OpenAI-compatible upstream: default, custom and passthrough actions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

from downcity.ai.context import CityInfo, Context, UserInfo
from downcity.ai.openai_client import OpenAICompatibleClient
from downcity.ai.provider import ModelConfig, Provider
from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import USAGE_CHUNK_TYPE, ActionRequest
from downcity.gateway.runner import ProviderRunner
from downcity.types import ChargeDraft, ImageJobResult, TextPart, UIMessage, Usage

BASE = "https://upstream.test/v1"
CHAT_URL = f"{BASE}/chat/completions"
KEY = "sk-very-secret"
ENV = {"UP_KEY": KEY}


class CompatProvider(Provider):
    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)


compat = CompatProvider("compat", env_key="UP_KEY", base_url=f"{BASE}/")
chat = compat.model("chat", upstream_model="up-chat-1")
passthrough = Provider("relay", env_key="UP_KEY", base_url=BASE, passthrough_model="relay-model")
relay = passthrough.model("relay-chat", upstream_model="ignored-upstream")
plain_relay = Provider("plain", env_key="UP_KEY", base_url=BASE)
plain = plain_relay.model("plain-chat", upstream_model="up-plain")


def request(model_id: str, **input: Any) -> ActionRequest:
    return ActionRequest(
        request_id="req_1",
        pathway="text",
        model_id=model_id,
        input=input or {"prompt": "hi"},
        user=UserInfo(user_id="u1"),
        city=CityInfo(city_id="c1"),
    )


_open_clients: list[httpx.AsyncClient] = []


def runner_for(model: ModelConfig, env: dict[str, str] | None = None) -> ProviderRunner:
    # respx mocks httpx's own transport, so these runners get a plain httpx client instead of the
    # aiohttp-backed pool a deployment uses (tested against a real server in test_upstream_http.py).
    http = httpx.AsyncClient(timeout=model.provider.timeout_s)
    _open_clients.append(http)
    return ProviderRunner(model.provider, {model.id: model}, ENV if env is None else env, http=http)


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while _open_clients:
        await _open_clients.pop().aclose()


def completion(content: str, **message: Any) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 1}},
    }


def delta(**fields: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": fields}]}


USAGE_EVENT = {
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3},
}


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def sent_body(route: respx.Route) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls.last.request.content)
    return body


async def collect(stream: AsyncIterator[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    return [batch async for batch in stream]


async def test_default_text_sends_normalized_body_with_upstream_model(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, json=completion("hello")))
    await runner_for(chat).text(request("chat", prompt="hi", temperature=0.5))
    assert sent_body(route) == {
        "model": "up-chat-1",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
    }
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


async def test_default_text_returns_message_and_usage(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, json=completion("hello")))
    started = time.perf_counter()
    outcome = await runner_for(chat).text(request("chat"))
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert outcome.output.role == "assistant"
    assert outcome.output.parts == [TextPart(text="hello")]
    assert outcome.output.id.startswith("msg_")
    assert outcome.usage == Usage(input_tokens=5, output_tokens=2, cached_tokens=1)
    assert outcome.charge is None
    # The first byte is timed inside the call: an integer number of milliseconds no longer than the call.
    assert isinstance(outcome.ttfb_ms, int) and 0 <= outcome.ttfb_ms <= elapsed_ms


async def test_default_text_maps_reasoning_and_tool_calls(respx_mock: respx.MockRouter) -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]
    body = completion("", reasoning_content="think", tool_calls=calls)
    respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, json=body))
    outcome = await runner_for(chat).text(request("chat"))
    assert [p.model_dump(by_alias=True) for p in outcome.output.parts] == [
        {"type": "reasoning", "text": "think"},
        {"type": "tool-call", "toolCallId": "call_1", "toolName": "add", "input": {"a": 1}},
    ]


async def test_default_stream_emits_tool_input_chunks(respx_mock: respx.MockRouter) -> None:
    first = {"index": 0, "id": "call_1", "function": {"name": "add", "arguments": '{"a":'}}
    body = sse(delta(tool_calls=[first]), delta(tool_calls=[{"index": 0, "function": {"arguments": " 1}"}}]))
    respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, content=body))
    batches = await collect(runner_for(chat).stream(request("chat")))
    assert [c for batch in batches for c in batch][:-1] == [
        {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "add"},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"a":'},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": " 1}"},
        {"type": "tool-input-available", "toolCallId": "call_1", "toolName": "add", "input": {"a": 1}},
    ]


class CustomText(Provider):
    async def text(self, ctx: Context) -> dict[str, Any]:
        ctx.metering.add_usage(Usage(input_tokens=4, output_tokens=6))
        return {"output": f"echo {ctx.input['prompt']}", "charge": {"amount_microcredits": 250}}


class BareMessage(Provider):
    async def text(self, ctx: Context) -> UIMessage:
        return UIMessage(id="m1", role="assistant", parts=[TextPart(text="bare")])


async def test_custom_text_dict_result_is_normalized() -> None:
    model = CustomText("custom").model("custom-text")
    outcome = await runner_for(model).text(request("custom-text", prompt="yo"))
    assert outcome.output.parts == [TextPart(text="echo yo")]
    assert outcome.charge == ChargeDraft(amount_microcredits=250)
    assert outcome.usage == Usage(input_tokens=4, output_tokens=6)


async def test_custom_text_bare_message_has_no_charge() -> None:
    model = BareMessage("bare").model("bare-text")
    outcome = await runner_for(model).text(request("bare-text"))
    assert (outcome.output.id, outcome.output.parts, outcome.charge) == ("m1", [TextPart(text="bare")], None)


async def test_unknown_model_is_422() -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await runner_for(chat).text(request("nope"))
    assert (caught.value.status, caught.value.type, caught.value.field) == (422, "unknown_model", "model")


async def test_model_without_the_pathway_is_422() -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await runner_for(relay).text(request("relay-chat"))
    assert (caught.value.status, caught.value.type, caught.value.field) == (
        422,
        "unsupported_pathway",
        "model",
    )


async def test_missing_api_key_is_503_naming_the_key() -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await runner_for(chat, env={}).text(request("chat"))
    assert (caught.value.status, caught.value.type) == (503, "provider_not_configured")
    assert caught.value.message == "provider 'compat' is not configured: UP_KEY is not set"


@pytest.mark.parametrize(
    ("response", "status", "type", "message"),
    [
        (httpx.Response(500, text="boom " + KEY), 502, "upstream_error", "upstream returned HTTP 500"),
        (
            httpx.Response(429, json={"error": {"code": "rate_limit_exceeded", "message": KEY}}),
            502,
            "upstream_error",
            "upstream returned HTTP 429 (rate_limit_exceeded)",
        ),
        (httpx.Response(401, json={"error": {"code": KEY}}), 502, "upstream_error", "upstream returned HTTP 401"),
        (
            httpx.Response(401, json={"error": {"code": "key_" + KEY, "type": "authentication_error"}}),
            502,
            "upstream_error",
            "upstream returned HTTP 401 (authentication_error)",
        ),
        (httpx.Response(400, json={"error": {"code": ["x"]}}), 502, "upstream_error", "upstream returned HTTP 400"),
        (
            httpx.Response(200, text="{not json"),
            502,
            "upstream_malformed",
            "the upstream answered with invalid JSON",
        ),
        (
            httpx.Response(200, json={"choices": []}),
            502,
            "upstream_malformed",
            "the upstream answer has no choices[0].message",
        ),
    ],
)
async def test_upstream_responses_map_to_errors_without_the_key(
    respx_mock: respx.MockRouter, response: httpx.Response, status: int, type: str, message: str
) -> None:
    respx_mock.post(CHAT_URL).mock(return_value=response)
    with pytest.raises(DowncityHTTPError) as caught:
        await runner_for(chat).text(request("chat"))
    assert (caught.value.status, caught.value.type, caught.value.message) == (status, type, message)


@pytest.mark.parametrize(
    ("exc", "status", "type"),
    [
        (httpx.ReadTimeout("slow"), 504, "upstream_timeout"),
        (httpx.ConnectError("refused"), 502, "upstream_unavailable"),
    ],
)
async def test_transport_failures_map_to_errors(
    respx_mock: respx.MockRouter, exc: Exception, status: int, type: str
) -> None:
    respx_mock.post(CHAT_URL).mock(side_effect=exc)
    with pytest.raises(DowncityHTTPError) as caught:
        await runner_for(chat).text(request("chat"))
    assert (caught.value.status, caught.value.type) == (status, type)


class Failing(Provider):
    async def text(self, ctx: Context) -> UIMessage:
        raise RuntimeError(f"crashed with {KEY}")


async def test_provider_exception_is_502_without_its_message() -> None:
    model = Failing("failing").model("failing-text")
    with pytest.raises(DowncityHTTPError) as caught:
        await runner_for(model).text(request("failing-text"))
    assert (caught.value.status, caught.value.type) == (502, "provider_error")
    assert caught.value.message == "provider 'failing' failed (RuntimeError)"


async def test_default_stream_yields_ui_chunks_then_usage(respx_mock: respx.MockRouter) -> None:
    body = sse(delta(role="assistant", content=""), delta(content="Hel"), delta(content="lo"), USAGE_EVENT, "[DONE]")
    respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, content=body))
    batches = await collect(runner_for(chat).stream(request("chat")))
    chunks = [chunk for batch in batches for chunk in batch]
    assert chunks[:-1] == [
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "Hel"},
        {"type": "text-delta", "id": "text-0", "delta": "lo"},
        {"type": "text-end", "id": "text-0"},
    ]
    assert chunks[-1]["type"] == USAGE_CHUNK_TYPE
    assert chunks[-1]["data"]["usage"] == {
        "input_tokens": 7,
        "output_tokens": 3,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "images": 0,
        "seconds": 0,
    }
    assert chunks[-1]["data"]["charge"] is None


async def test_default_stream_asks_upstream_for_usage(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, content=sse("[DONE]")))
    await collect(runner_for(chat).stream(request("chat")))
    assert sent_body(route)["stream"] is True
    assert sent_body(route)["stream_options"] == {"include_usage": True}


async def test_default_stream_closes_reasoning_before_text(respx_mock: respx.MockRouter) -> None:
    body = sse(delta(reasoning_content="hmm"), delta(content="ok"), "[DONE]")
    respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, content=body))
    batches = await collect(runner_for(chat).stream(request("chat")))
    assert [c["type"] for batch in batches for c in batch] == [
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-end",
        USAGE_CHUNK_TYPE,
    ]


async def test_malformed_sse_mid_stream_raises_after_earlier_chunks(respx_mock: respx.MockRouter) -> None:
    content = pieces(sse(delta(content="partial")), b"data: {not json\n\n")
    respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, content=content))
    received: list[dict[str, Any]] = []
    with pytest.raises(DowncityHTTPError) as caught:
        async for batch in runner_for(chat).stream(request("chat")):
            received.extend(batch)
    assert received == [
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "partial"},
    ]
    assert (caught.value.status, caught.value.type) == (502, "upstream_malformed")


async def test_stream_upstream_error_status_raises_before_any_chunk(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(503))
    received: list[list[dict[str, Any]]] = []
    with pytest.raises(DowncityHTTPError) as caught:
        async for batch in runner_for(chat).stream(request("chat")):
            received.append(batch)
    assert (received, caught.value.status, caught.value.message) == ([], 502, "upstream returned HTTP 503")


class CustomStream(Provider):
    def __init__(self, id: str, gaps: dict[int, float] | None = None, count: int = 3) -> None:
        super().__init__(id)
        self.gaps = gaps or {}
        self.count = count

    async def stream(self, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "start"}
        for index in range(self.count):
            if index in self.gaps:
                await asyncio.sleep(self.gaps[index])
            yield {"type": "text-delta", "id": "t", "delta": str(index)}
        ctx.metering.set_usage(Usage(output_tokens=self.count))
        ctx.metering.set_charge(ChargeDraft(amount_microcredits=9))
        yield {"type": "finish"}


async def test_custom_stream_reports_metering_and_drops_framing_chunks() -> None:
    model = CustomStream("custom-stream").model("cs")
    batches = await collect(runner_for(model).stream(request("cs")))
    assert batches[0][:3] == [{"type": "text-delta", "id": "t", "delta": str(i)} for i in range(3)]
    assert batches[-1][-1]["data"]["usage"]["output_tokens"] == 3
    assert batches[-1][-1]["data"]["charge"]["amount_microcredits"] == 9


async def test_stream_chunks_arriving_together_share_one_batch_with_usage() -> None:
    model = CustomStream("together").model("together-model")
    batches = await collect(runner_for(model).stream(request("together-model")))
    assert [[c["type"] for c in batch] for batch in batches] == [["text-delta"] * 3 + [USAGE_CHUNK_TYPE]]


async def test_stream_gap_longer_than_window_splits_batches() -> None:
    model = CustomStream("gappy", gaps={2: 0.1}).model("gappy-model")
    batches = await collect(runner_for(model).stream(request("gappy-model")))
    assert [len(batch) for batch in batches] == [2, 2]


async def test_stream_batches_hold_at_most_32_chunks() -> None:
    model = CustomStream("many", count=40).model("many-model")
    batches = await collect(runner_for(model).stream(request("many-model")))
    assert [len(batch) for batch in batches] == [32, 9]


class Endless(Provider):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.closed = False

    async def stream(self, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                yield {"type": "text-delta", "id": "t", "delta": "x"}
                await asyncio.sleep(0.001)
        finally:
            self.closed = True


async def test_closing_a_stream_early_closes_the_provider_stream() -> None:
    provider = Endless("endless")
    stream = runner_for(provider.model("endless-model")).stream(request("endless-model"))
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert (first[0]["delta"], provider.closed) == ("x", True)


async def test_passthrough_replaces_model_and_returns_body_as_is(respx_mock: respx.MockRouter) -> None:
    upstream = completion("hi") | {"system_fingerprint": "fp_1"}
    route = respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, json=upstream))
    outcome = await runner_for(relay).openai(request("relay-chat", model="relay-chat", messages=[], top_k=3))
    assert sent_body(route) == {"model": "relay-model", "messages": [], "top_k": 3}
    assert outcome.body == upstream
    assert outcome.usage == Usage(input_tokens=5, output_tokens=2, cached_tokens=1)


async def test_passthrough_without_passthrough_model_sends_upstream_model(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, json=completion("hi")))
    await runner_for(plain).openai(request("plain-chat", model="plain-chat", messages=[]))
    assert sent_body(route)["model"] == "up-plain"


async def test_passthrough_stream_yields_upstream_bytes_unchanged_then_usage(
    respx_mock: respx.MockRouter,
) -> None:
    raw = [
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n',
        b"\ndata: " + json.dumps(USAGE_EVENT).encode(),
        b"\n\n",
    ]
    route = respx_mock.post(CHAT_URL).mock(return_value=httpx.Response(200, content=pieces(*raw)))
    items = [item async for item in runner_for(relay).openai_stream(request("relay-chat", stream=True))]
    *data, summary = items
    assert data == raw
    assert isinstance(summary, dict)
    assert (summary["usage"], summary["charge"]) == (
        {
            "input_tokens": 7,
            "output_tokens": 3,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "cache_write_tokens": 0,
            "images": 0,
            "seconds": 0,
        },
        None,
    )
    assert isinstance(summary["ttfb_ms"], int)
    assert sent_body(route) == {
        "stream": True,
        "model": "relay-model",
        "stream_options": {"include_usage": True},
    }


class CustomOpenAI(Provider):
    async def openai(self, ctx: Context) -> dict[str, Any] | AsyncIterator[bytes]:
        ctx.metering.set_usage(Usage(input_tokens=1))
        if ctx.input.get("stream"):
            return pieces(b"data: custom\n\n")
        return {"custom": True}


async def test_custom_openai_overrides_passthrough() -> None:
    provider = CustomOpenAI("own-openai", env_key="UP_KEY", base_url=BASE)
    outcome = await runner_for(provider.model("own")).openai(request("own", messages=[]))
    assert (outcome.body, outcome.usage) == ({"custom": True}, Usage(input_tokens=1))


async def test_custom_openai_stream_yields_its_bytes_then_usage() -> None:
    provider = CustomOpenAI("own-openai-stream")
    items = [i async for i in runner_for(provider.model("own-s")).openai_stream(request("own-s", stream=True))]
    assert items[0] == b"data: custom\n\n"
    assert isinstance(items[1], dict) and items[1]["usage"]["input_tokens"] == 1


class Images(Provider):
    async def image_create(self, ctx: Context) -> ImageJobResult:
        return ImageJobResult.model_validate({"job_id": "up-1", "status": "queued", "poll_after_ms": 500})

    async def image_fetch(self, ctx: Context) -> ImageJobResult:
        assert ctx.job is not None
        return ImageJobResult.model_validate({"job_id": ctx.job["upstream_id"], "status": "running"})


images = Images("images").model("img")


async def test_image_create_returns_the_provider_result() -> None:
    result = await runner_for(images).image_create(request("img", prompt="a cat"))
    assert result == ImageJobResult(job_id="up-1", status="queued", poll_after_ms=500)


async def test_image_fetch_sees_the_stored_job() -> None:
    req = request("img").model_copy(update={"job": {"upstream_id": "up-9"}})
    result = await runner_for(images).image_fetch(req)
    assert (result.job_id, result.status) == ("up-9", "running")


async def test_image_fetch_without_job_is_422() -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await runner_for(images).image_fetch(request("img"))
    assert (caught.value.status, caught.value.field) == (422, "job")


class Video(Provider):
    async def video(self, ctx: Context) -> dict[str, Any]:
        ctx.metering.set_charge(ChargeDraft(amount_microcredits=7_000))
        ctx.metering.ttfb_ms = 35
        return {"video_url": f"https://cdn.test/{ctx.input['prompt']}.mp4"}


async def test_video_returns_the_provider_result_and_its_metered_charge() -> None:
    result = await runner_for(Video("video").model("vid")).video(request("vid", prompt="waves"))
    assert result.body == {"video_url": "https://cdn.test/waves.mp4"}
    assert (result.charge, result.ttfb_ms) == (ChargeDraft(amount_microcredits=7_000), 35)


def test_runner_refuses_models_of_another_provider() -> None:
    with pytest.raises(ValueError, match="belongs to provider 'relay'"):
        ProviderRunner(compat, {"relay-chat": relay}, ENV)


async def test_aclose_leaves_a_given_http_client_open() -> None:
    async with httpx.AsyncClient() as http:
        runner = ProviderRunner(compat, {"chat": chat}, ENV, http=http)
        await runner.aclose()
        assert http.is_closed is False
