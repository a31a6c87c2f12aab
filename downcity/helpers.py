"""Helpers for provider authors: env, model ids, messages, OpenAI-compatible bodies, usage and tools."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from downcity.errors import invalid
from downcity.types import FilePart, ReasoningPart, TextPart, UIMessage, UIPart, Usage

if TYPE_CHECKING:
    from downcity.context import Context
    from downcity.model import ModelConfig

# Generation parameters forwarded to OpenAI-compatible upstreams when present in the request.
_FORWARDED_PARAMS = (
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning_effort",
)
_MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def read_required_env(ctx: Context, key: str) -> str:
    """The provider environment variable `key`; 503 `provider_not_configured` when unset."""
    return ctx.env(key)


def resolve_upstream_model(model: ModelConfig) -> str:
    """The model id sent upstream."""
    return model.upstream_model


def trim_trailing_slash(url: str) -> str:
    """The URL without trailing slashes, so paths can be appended."""
    return url.rstrip("/")


def new_message_id() -> str:
    """A fresh UIMessage id."""
    return f"msg_{uuid.uuid4().hex}"


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


def normalize_openai_compatible_body(input: Mapping[str, Any], model: ModelConfig) -> dict[str, Any]:
    """An OpenAI chat body from ``{prompt? | messages?, system?, tools?, temperature?, max_tokens?, ...}``."""
    body: dict[str, Any] = {
        "model": resolve_upstream_model(model),
        "messages": _openai_messages(input),
    }
    _check_number(input, "temperature", minimum=0.0)
    _check_positive_int(input, "max_tokens")
    for key in _FORWARDED_PARAMS:
        if input.get(key) is not None:
            body[key] = input[key]
    tools = build_tool_set(input.get("tools"))
    if tools:
        body["tools"] = tools
    return body


def read_openai_compatible_sse_usage(chunk: Mapping[str, Any]) -> Usage | None:
    """The usage carried by one streamed chunk (the final one with `include_usage`), else None."""
    raw = chunk.get("usage")
    return normalize_ai_usage(raw) if isinstance(raw, Mapping) else None


def normalize_ai_usage(raw: Mapping[str, Any] | None) -> Usage:
    """Usage from OpenAI chat (`prompt_tokens`…) or responses-style (`input_tokens`…) shapes."""
    if not raw:
        return Usage()
    input_details = _mapping(raw.get("prompt_tokens_details")) or _mapping(raw.get("input_tokens_details"))
    output_details = _mapping(raw.get("completion_tokens_details")) or _mapping(raw.get("output_tokens_details"))
    return Usage(
        input_tokens=_count(_first(raw, "prompt_tokens", "input_tokens")),
        output_tokens=_count(_first(raw, "completion_tokens", "output_tokens")),
        cached_tokens=_count(input_details.get("cached_tokens", raw.get("cache_read_input_tokens"))),
        reasoning_tokens=_count(output_details.get("reasoning_tokens")),
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


def _openai_messages(input: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = input.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise invalid("system must be a string", "system")
        messages.append({"role": "system", "content": system})
    raw = input.get("messages")
    if raw is not None:
        if not isinstance(raw, list):
            raise invalid("messages must be a list", "messages")
        messages.extend(_openai_message(m, f"messages[{i}]") for i, m in enumerate(raw))
    prompt = input.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt:
            raise invalid("prompt must be a non-empty string", "prompt")
        messages.append({"role": "user", "content": prompt})
    if raw is None and prompt is None:
        raise invalid("provide prompt or messages", "prompt")
    return messages


def _openai_message(message: Any, field: str) -> dict[str, Any]:
    if isinstance(message, BaseModel):
        message = message.model_dump(by_alias=True)
    if not isinstance(message, Mapping):
        raise invalid("each message must be an object", field)
    role = message.get("role")
    if role not in _MESSAGE_ROLES:
        raise invalid(f"role must be one of {sorted(_MESSAGE_ROLES)}", f"{field}.role")
    if "parts" not in message:
        return dict(message)
    parts = message["parts"]
    if not isinstance(parts, list):
        raise invalid("parts must be a list", f"{field}.parts")
    content = [c for i, p in enumerate(parts) if (c := _content_part(p, f"{field}.parts[{i}]")) is not None]
    if all(c["type"] == "text" for c in content):
        return {"role": role, "content": "\n".join(c["text"] for c in content)}
    return {"role": role, "content": content}


def _content_part(part: Any, field: str) -> dict[str, Any] | None:
    if not isinstance(part, Mapping):
        raise invalid("each part must be an object", field)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid("a text part needs a string text", f"{field}.text")
        return {"type": "text", "text": text}
    if kind != "file":
        # Reasoning, tool and step parts are transcript details an upstream cannot take back as input.
        return None
    media_type = part.get("mediaType", part.get("media_type"))
    url = part.get("url")
    if not isinstance(media_type, str) or not media_type:
        raise invalid("a file part needs a mediaType", f"{field}.mediaType")
    if not isinstance(url, str) or not url:
        raise invalid("a file part needs a url", f"{field}.url")
    if media_type.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": url}}
    return {"type": "file", "file": {"file_data": url, "filename": part.get("filename") or "file"}}


def _check_number(input: Mapping[str, Any], key: str, *, minimum: float) -> None:
    value = input.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise invalid(f"{key} must be a number ≥ {minimum:g}", key)


def _check_positive_int(input: Mapping[str, Any], key: str) -> None:
    value = input.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(f"{key} must be a positive integer", key)


def _first(raw: Mapping[str, Any], *keys: str) -> Any:
    return next((raw[key] for key in keys if raw.get(key) is not None), None)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))
