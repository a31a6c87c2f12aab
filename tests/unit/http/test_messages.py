"""Typed messages: a malformed UIMessage or OpenAI chat message is a 422 naming its path, before any hold or upstream
call; well-formed ones, vendor extensions included, reach the upstream as sent."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.http.fakes import App, row_counts

USER_HI = {"role": "user", "content": "hi"}

# (route, body, the field the 422 names, its message)
REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("/v1/ai/text", {"messages": [{}]}, "messages[0].role", "field required"),
    ("/v1/ai/chat/completions", {"messages": [{}]}, "messages[0].role", "field required"),
    (
        "/v1/ai/text",
        {"messages": [{"role": "user", "content": 5}]},
        "messages[0].content",
        "Input should be a valid string or Input should be a valid list",
    ),
    (
        "/v1/ai/chat/completions",
        {"messages": [{"role": "wizard", "content": "hi"}]},
        "messages[0].role",
        "must be one of 'system', 'developer', 'user', 'assistant', 'tool', 'function'",
    ),
    (
        "/v1/ai/text",
        {"messages": [{"role": "system", "content": "be brief"}]},
        "messages",
        "needs at least one message that is not system or developer",
    ),
    (
        "/v1/ai/chat/completions",
        {"messages": [{"role": "system", "content": "x"}, {"role": "developer", "content": "y"}]},
        "messages",
        "needs at least one message that is not system or developer",
    ),
    (
        "/v1/ai/stream",
        {"messages": [{"role": "user", "parts": [{"type": "file", "url": "https://x.test/a.png"}]}]},
        "messages[0].parts[0].mediaType",
        "field required",
    ),
    (
        "/v1/ai/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0].image_url.url",
        "field required",
    ),
    (
        "/v1/ai/chat/completions",
        {
            "messages": [
                USER_HI,
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
        "field required",
    ),
    (
        "/v1/ai/chat/completions",
        {"messages": [USER_HI, {"role": "tool", "content": "42"}]},
        "messages[1].tool_call_id",
        "field required",
    ),
    (
        "/v1/ai/chat/completions",
        {"messages": [USER_HI, {"role": "assistant"}]},
        "messages[1]",
        "an assistant message needs content, tool_calls or a refusal",
    ),
    (
        "/v1/ai/text",
        {"prompt": "hi", "tools": [{"type": "function", "function": {"name": "has space"}}]},
        "tools[0].function.name",
        "String should match pattern '^[A-Za-z0-9_-]{1,64}$'",
    ),
]


@pytest.mark.parametrize(("path", "body", "field", "message"), REFUSED)
async def test_a_malformed_message_is_a_422_naming_its_path_before_any_hold_or_upstream_call(
    shared_app: App, path: str, body: dict[str, Any], field: str, message: str
) -> None:
    before = await row_counts(shared_app.runtime)
    async with shared_app.user() as client:
        response = await client.post(path, json=body)

    assert response.status_code == 422
    assert response.json() == {"error": {"type": "invalid_request", "message": f"{field}: {message}", "field": field}}
    assert shared_app.upstream.calls == []
    assert await row_counts(shared_app.runtime) == before


async def test_ui_messages_reach_the_upstream_as_openai_messages(app: App) -> None:
    parts = [
        {"type": "step-start"},
        {"type": "text", "text": "what is this?"},
        {"type": "file", "mediaType": "image/png", "url": "https://x.test/a.png"},
        {"type": "tool-lookup", "toolCallId": "t1", "state": "output-available", "output": {"ok": True}},
    ]
    async with app.user() as client:
        response = await client.post("/v1/ai/text", json={"messages": [{"id": "m1", "role": "user", "parts": parts}]})

    assert response.status_code == 200
    assert app.upstream.calls[0]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
            ],
        }
    ]


async def test_an_input_image_part_is_taken_as_an_image(app: App) -> None:
    content = [{"type": "text", "text": "what?"}, {"type": "input_image", "image_url": "https://x.test/a.png"}]
    async with app.user() as client:
        response = await client.post(
            "/v1/ai/chat/completions", json={"messages": [{"role": "user", "content": content}]}
        )

    assert response.status_code == 200
    assert app.upstream.calls[0]["messages"] == [{"role": "user", "content": content}]


async def test_chat_messages_with_tool_calls_and_vendor_fields_pass_through_unchanged(app: App) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "look it up",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    async with app.user() as client:
        response = await client.post(
            "/v1/ai/chat/completions", json={"messages": messages, "seed": 7, "logprobs": True}
        )

    assert response.status_code == 200
    assert app.upstream.calls == [{"messages": messages, "seed": 7, "logprobs": True, "model": "fake-chat"}]
