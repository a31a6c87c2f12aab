"""Pure message helpers: UIMessages, streamed and reported usage, tool sets. No provider-contract types."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from downcity.errors import invalid
from downcity.types import FilePart, ReasoningPart, TextPart, UIMessage, UIPart, Usage


def trim_trailing_slash(url: str) -> str:
    """The URL without trailing slashes, so paths can be appended."""
    return url.rstrip("/")


def new_message_id() -> str:
    """A fresh UIMessage id."""
    return f"msg_{secrets.token_hex(16)}"


def build_assistant_message(text: str, *, reasoning: str | None = None, id: str | None = None) -> UIMessage:
    """An assistant UIMessage with an optional reasoning part before the text part."""
    parts: list[UIPart] = []
    if reasoning:
        parts.append(ReasoningPart(text=reasoning))
    if text or not parts:
        parts.append(TextPart(text=text))
    return UIMessage(id=id or new_message_id(), role="assistant", parts=parts)


def build_image_message(urls: Sequence[str] | str, media_type: str = "image/png") -> UIMessage:
    """An assistant UIMessage with one file part per image URL."""
    url_list = [urls] if isinstance(urls, str) else list(urls)
    parts: list[UIPart] = [FilePart(media_type=media_type, url=url) for url in url_list]
    return UIMessage(id=new_message_id(), role="assistant", parts=parts)


def read_openai_compatible_sse_usage(chunk: Mapping[str, Any]) -> Usage | None:
    """The usage carried by one streamed chunk (the final one with `include_usage`), else None."""
    raw = chunk.get("usage")
    return normalize_ai_usage(raw) if isinstance(raw, Mapping) else None


def normalize_ai_usage(raw: Mapping[str, Any] | None) -> Usage:
    """Usage from OpenAI chat (`prompt_tokens`…), responses-style (`input_tokens`…) or Anthropic-style shapes.

    OpenAI's prompt count includes its cached tokens; Anthropic's `input_tokens` excludes the
    `cache_read_input_tokens` and `cache_creation_input_tokens` it reports beside them, so those are added
    back: `Usage.input_tokens` always counts every prompt token.
    """
    if not raw:
        return Usage()
    input_details = _mapping(raw.get("prompt_tokens_details")) or _mapping(raw.get("input_tokens_details"))
    output_details = _mapping(raw.get("completion_tokens_details")) or _mapping(raw.get("output_tokens_details"))
    cache_read = _count(raw.get("cache_read_input_tokens"))
    cache_write = _count(raw.get("cache_creation_input_tokens"))
    prompt = _count(_first(raw, "prompt_tokens", "input_tokens"))
    anthropic = "prompt_tokens" not in raw and not input_details
    cached = _count(input_details.get("cached_tokens")) or cache_read
    return Usage(
        input_tokens=prompt + cache_read + cache_write if anthropic else prompt,
        output_tokens=_count(_first(raw, "completion_tokens", "output_tokens")),
        cached_tokens=cached,
        reasoning_tokens=_count(output_details.get("reasoning_tokens")),
        cache_write_tokens=cache_write,
    )


def build_tool_set(tools: Mapping[str, Any] | Sequence[Any] | None) -> list[dict[str, Any]]:
    """OpenAI `tools` from ``{name: {description, parameters}}`` or an already OpenAI-shaped list."""
    if tools is None:
        return []
    if isinstance(tools, Mapping):
        return [_function_tool(name, spec) for name, spec in tools.items()]
    if isinstance(tools, Sequence) and not isinstance(tools, str):
        for index, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                raise invalid("each tool must be an object", f"tools[{index}]")
        return [dict(tool) for tool in tools]
    raise invalid("tools must be an object of name → {description, parameters} or a list", "tools")


def _function_tool(name: Any, spec: Any) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise invalid("tool names must be non-empty strings", "tools")
    if not isinstance(spec, Mapping):
        raise invalid("a tool must be an object with description and parameters", f"tools.{name}")
    parameters = spec.get("parameters", spec.get("inputSchema", {"type": "object", "properties": {}}))
    if not isinstance(parameters, Mapping):
        raise invalid("tool parameters must be a JSON schema object", f"tools.{name}.parameters")
    function: dict[str, Any] = {"name": name, "parameters": dict(parameters)}
    description = spec.get("description")
    if description is not None:
        function["description"] = str(description)
    return {"type": "function", "function": function}


def _first(raw: Mapping[str, Any], *keys: str) -> Any:
    return next((raw[key] for key in keys if raw.get(key) is not None), None)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))
