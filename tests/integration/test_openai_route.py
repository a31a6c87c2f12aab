"""The official `openai` client against `/v1/ai/chat/completions` through the gateway."""

from __future__ import annotations

import re

import httpx
import pytest
from openai import AsyncOpenAI

from tests.integration.conftest import ServedApp
from tests.integration.test_ai_routes import balance_of, usage_rows

pytestmark = pytest.mark.ray


def openai_client(app: ServedApp, token: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{app.url}/v1/ai", api_key=token, max_retries=0)


async def balance_for(app: ServedApp, token: str) -> tuple[int, int]:
    async with httpx.AsyncClient(base_url=app.url, headers={"Authorization": f"Bearer {token}"}) as client:
        return await balance_of(client)


def completion_identity(stream: bytes) -> tuple[bytes, bytes]:
    """The completion id and `created` second an upstream stream carries in every chunk."""
    found = re.search(rb'"id":"(chatcmpl-[0-9a-f]+)","object":"chat\.completion\.chunk","created":(\d+)', stream)
    assert found is not None, stream
    return found.group(1), found.group(2)


async def test_openai_client_non_streaming_passthrough(served: ServedApp) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    client = openai_client(served, token)
    completion = await client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "ping pong"}]
    )
    await client.close()
    assert completion.choices[0].message.content == "Echo: ping pong"
    assert completion.model == "deepseek-chat-v3"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    rows = await usage_rows(served, user_id)
    assert [(r["pathway"], r["input_tokens"], r["output_tokens"], r["charge_microcredits"]) for r in rows] == [
        ("openai", 2, 3, 2 + 3 * 3)
    ]


async def test_openai_client_streaming_passthrough(served: ServedApp) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    client = openai_client(served, token)
    stream = await client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    await client.close()
    assert text == "Echo: a b c"
    rows = await usage_rows(served, user_id)
    assert [
        (r["pathway"], r["status"], r["input_tokens"], r["output_tokens"], r["charge_microcredits"]) for r in rows
    ] == [("openai", "ok", 3, 4, 3 + 3 * 4)]
    assert await balance_for(served, token) == (100_000 - (3 + 3 * 4), 0)


async def test_openai_stream_on_a_flat_priced_model_is_charged_the_flat_price(served: ServedApp) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    client = openai_client(served, token)
    stream = await client.chat.completions.create(
        model="deepseek-flat", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    await client.close()
    assert text == "Echo: a b c"
    rows = await usage_rows(served, user_id)
    assert [(r["pathway"], r["model_id"], r["status"], r["charge_microcredits"]) for r in rows] == [
        ("openai", "deepseek-flat", "ok", 500)
    ]
    assert await balance_for(served, token) == (100_000 - 500, 0)


async def test_streaming_passthrough_forwards_upstream_bytes_unchanged(served: ServedApp, demo_upstream: str) -> None:
    _, _, token = await served.new_user(credit=100_000)
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "x y"}], "stream": True}
    async with httpx.AsyncClient(timeout=30) as http:
        through = await http.post(
            f"{served.url}/v1/ai/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        direct = await http.post(
            f"{demo_upstream}/chat/completions",
            json={**body, "model": "deepseek-chat-v3", "stream_options": {"include_usage": True}},
            headers={"Authorization": "Bearer direct"},
        )
    assert (through.status_code, direct.status_code) == (200, 200)
    assert through.headers["content-type"].startswith("text/event-stream")
    # Byte for byte what the upstream sends, once its per-response id and timestamp are those of the gateway's call.
    (through_id, through_created), (direct_id, direct_created) = map(
        completion_identity, (through.content, direct.content)
    )
    expected = direct.content.replace(direct_id, through_id).replace(
        b'"created":' + direct_created + b",", b'"created":' + through_created + b","
    )
    assert through.content == expected
    assert through.content.endswith(b"data: [DONE]\n\n")
