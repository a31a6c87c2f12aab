"""Helpers bound to the provider contract: env lookup, upstream model ids and OpenAI-compatible request bodies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from downcity.ai.context import Context, ModelView
from downcity.ai.messages import build_tool_set
from downcity.errors import invalid

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


def resolve_upstream_model(model: ModelView) -> str:
    """The model id sent upstream."""
    return model.upstream_model


def normalize_openai_compatible_body(input: Mapping[str, Any], model: ModelView) -> dict[str, Any]:
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
