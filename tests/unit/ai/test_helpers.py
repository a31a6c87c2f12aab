"""Provider-author helpers: env, ids, messages, OpenAI-compatible bodies, usage, tools and SSE usage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from downcity.ai.context import CityInfo, Context, UserInfo
from downcity.ai.helpers import normalize_openai_compatible_body, read_required_env, resolve_upstream_model
from downcity.ai.messages import (
    build_assistant_message,
    build_image_message,
    build_tool_set,
    normalize_ai_usage,
    read_openai_compatible_sse_usage,
    trim_trailing_slash,
)
from downcity.ai.openai_client import OpenAICompatibleClient, SSEUsageSniffer, with_stream_usage
from downcity.ai.provider import Provider
from downcity.errors import DowncityHTTPError
from downcity.types import Usage


class Compat(Provider):
    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)


model = Compat("compat").model("m", upstream_model="up-m")


def _body(**input: Any) -> dict[str, Any]:
    return normalize_openai_compatible_body(input, model)


def _invalid_field(**input: Any) -> str | None:
    with pytest.raises(DowncityHTTPError) as caught:
        _body(**input)
    assert caught.value.status == 422
    return caught.value.field


def test_read_required_env_reads_the_context_env() -> None:
    ctx = Context(
        input={},
        user=UserInfo(user_id="u"),
        city=CityInfo(city_id="c"),
        model=model,
        pathway="text",
        request_id="r",
        env_reader={"KEY": "v"},
    )
    assert read_required_env(ctx, "KEY") == "v"


def test_resolve_upstream_model_is_the_upstream_id() -> None:
    assert resolve_upstream_model(model) == "up-m"


def test_trim_trailing_slash() -> None:
    assert trim_trailing_slash("https://up.test/v1//") == "https://up.test/v1"


def test_build_assistant_message_puts_reasoning_first() -> None:
    message = build_assistant_message("answer", reasoning="why", id="m1")
    assert message.model_dump() == {
        "id": "m1",
        "role": "assistant",
        "parts": [{"type": "reasoning", "text": "why"}, {"type": "text", "text": "answer"}],
        "metadata": {},
    }


def test_build_assistant_message_gets_a_fresh_id() -> None:
    assert build_assistant_message("a").id.startswith("msg_")


def test_build_image_message_has_one_file_part_per_url() -> None:
    message = build_image_message(["https://i/1.webp", "https://i/2.webp"], media_type="image/webp")
    assert [part.model_dump() for part in message.parts] == [
        {"type": "file", "mediaType": "image/webp", "url": "https://i/1.webp", "filename": None},
        {"type": "file", "mediaType": "image/webp", "url": "https://i/2.webp", "filename": None},
    ]


def test_body_from_a_prompt_and_system() -> None:
    assert _body(prompt="hi", system="be brief", max_tokens=10) == {
        "model": "up-m",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 10,
    }


def test_body_turns_text_only_uimessages_into_string_content() -> None:
    parts = [
        {"type": "reasoning", "text": "hidden"},
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]
    assert _body(messages=[{"role": "assistant", "parts": parts}])["messages"] == [
        {"role": "assistant", "content": "a\nb"}
    ]


def test_body_turns_file_parts_into_image_url_and_file_parts() -> None:
    parts = [
        {"type": "text", "text": "compare"},
        {"type": "file", "mediaType": "image/png", "url": "https://i/1.png"},
        {
            "type": "file",
            "mediaType": "application/pdf",
            "url": "data:application/pdf;base64,AA",
            "filename": "a.pdf",
        },
    ]
    assert _body(messages=[{"role": "user", "parts": parts}])["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "https://i/1.png"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA", "filename": "a.pdf"}},
    ]


def test_body_passes_openai_messages_through() -> None:
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}
    assert _body(messages=[message])["messages"] == [message]


def test_body_includes_tools() -> None:
    tools = {"add": {"description": "add numbers", "parameters": {"type": "object"}}}
    assert _body(prompt="hi", tools=tools)["tools"] == [
        {
            "type": "function",
            "function": {"name": "add", "parameters": {"type": "object"}, "description": "add numbers"},
        }
    ]


@pytest.mark.parametrize(
    ("input", "field"),
    [
        ({}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "parts": [{"type": "file", "url": "u"}]}]},
            "messages[0].parts[0].mediaType",
        ),
        ({"prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_input_is_422_naming_the_field(input: dict[str, Any], field: str) -> None:
    assert _invalid_field(**input) == field


def test_sse_usage_is_read_from_the_usage_chunk() -> None:
    chunk = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    assert read_openai_compatible_sse_usage(chunk) == Usage(input_tokens=3, output_tokens=4)


def test_sse_usage_is_none_for_a_content_chunk() -> None:
    assert read_openai_compatible_sse_usage({"choices": [{"delta": {"content": "a"}}]}) is None


def test_normalize_openai_chat_usage() -> None:
    raw = {
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 6},
    }
    assert normalize_ai_usage(raw) == Usage(input_tokens=10, output_tokens=20, cached_tokens=4, reasoning_tokens=6)


def test_normalize_input_output_usage() -> None:
    raw = {
        "input_tokens": 8,
        "output_tokens": 2,
        "input_tokens_details": {"cached_tokens": 1},
        "output_tokens_details": {"reasoning_tokens": 1},
    }
    assert normalize_ai_usage(raw) == Usage(input_tokens=8, output_tokens=2, cached_tokens=1, reasoning_tokens=1)


def test_normalize_usage_ignores_missing_and_bad_values() -> None:
    assert normalize_ai_usage(None) == Usage()
    assert normalize_ai_usage({"prompt_tokens": "many", "completion_tokens": -3}) == Usage()


def test_tool_set_passes_an_openai_list_through() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert build_tool_set(tools) == tools


def test_tool_set_of_nothing_is_empty() -> None:
    assert build_tool_set(None) == []


@pytest.mark.parametrize(
    ("tools", "field"),
    [
        ("add", "tools"),
        (["add"], "tools[0]"),
        ({"add": "x"}, "tools.add"),
        ({"add": {"parameters": 1}}, "tools.add.parameters"),
    ],
)
def test_bad_tools_are_422_naming_the_field(tools: Any, field: str) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        build_tool_set(tools)
    assert (caught.value.status, caught.value.field) == (422, field)


def test_with_stream_usage_keeps_other_stream_options() -> None:
    body = with_stream_usage({"model": "m", "stream_options": {"other": 1}})
    assert body == {"model": "m", "stream": True, "stream_options": {"other": 1, "include_usage": True}}


def test_usage_sniffer_reads_usage_split_across_reads() -> None:
    event = b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 2}}).encode() + b"\n\n"
    sniffer = SSEUsageSniffer()
    for piece in (b"data: not json\n", event[:9], event[9:], b"data: [DONE]"):
        sniffer.feed(piece)
    sniffer.close()
    assert sniffer.usage == Usage(input_tokens=2)
