"""An async client for OpenAI-compatible `/chat/completions` upstreams, and the shapes it translates.

Every failure becomes a `DowncityHTTPError`: an upstream 4xx/5xx is 502 `upstream_error`, a timeout 504
`upstream_timeout`, a connection failure 502 `upstream_unavailable`, unparseable JSON or SSE 502
`upstream_malformed`. Messages carry the upstream status and, when it is one of `UPSTREAM_ERROR_CODES`, the
upstream's error code: never its message, body or any other text, which may echo the API key.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx

from downcity.ai.messages import build_assistant_message, read_openai_compatible_sse_usage, trim_trailing_slash
from downcity.ai.resilience import retry_after_s
from downcity.errors import DowncityHTTPError, upstream_error, upstream_timeout
from downcity.types import ToolCallPart, UIMessage, Usage

# OpenAI's documented error codes and types, common OpenAI-compatible ones and the demo upstream's injected
# fault: the only upstream text a caller may see.
UPSTREAM_ERROR_CODES = frozenset(
    {
        "api_error",
        "authentication_error",
        "content_filter",
        "content_policy_violation",
        "context_length_exceeded",
        "demo_fault",
        "insufficient_quota",
        "invalid_api_key",
        "invalid_prompt",
        "invalid_request_error",
        "invalid_value",
        "model_not_found",
        "not_found_error",
        "overloaded_error",
        "permission_error",
        "rate_limit_error",
        "rate_limit_exceeded",
        "server_error",
        "string_above_max_length",
        "unsupported_parameter",
        "unsupported_value",
    }
)


def upstream_malformed(message: str) -> DowncityHTTPError:
    """502 for an upstream answer that is not the JSON or SSE it should be."""
    return DowncityHTTPError(502, "upstream_malformed", message)


@contextmanager
def _mapped_transport_errors() -> Iterator[None]:
    try:
        yield
    except httpx.ConnectTimeout:
        raise upstream_timeout("the upstream did not answer in time (connect timeout)", "connect") from None
    except httpx.TimeoutException:
        raise upstream_timeout("the upstream did not answer in time (read timeout)", "read") from None
    except httpx.TransportError as exc:
        raise DowncityHTTPError(
            502,
            "upstream_unavailable",
            f"could not reach the upstream ({type(exc).__name__})",
            detail={"kind": "connect"},
        ) from None


def _status_error(response: httpx.Response) -> DowncityHTTPError:
    candidates: list[object] = []
    try:
        error = response.json().get("error")
        candidates = [error.get("code"), error.get("type")]
    except (ValueError, AttributeError):
        pass
    code = next((c for c in candidates if isinstance(c, str) and c in UPSTREAM_ERROR_CODES), None)
    named = f" ({code})" if code else ""
    error = upstream_error(f"upstream returned HTTP {response.status_code}{named}")
    error.detail = {"upstream_status": response.status_code}
    wait = retry_after_s(response.headers, time.time())
    if wait is not None:
        error.detail["retry_after_s"] = wait
    return error


def _sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for blank lines, comments and other fields."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


def _decode_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise upstream_malformed("the upstream sent a stream event that is not JSON") from None
    if not isinstance(chunk, dict):
        raise upstream_malformed("the upstream sent a stream event that is not a JSON object")
    if chunk.get("error") is not None:
        raise upstream_error("the upstream reported an error mid-stream")
    return chunk


@dataclasses.dataclass(frozen=True, repr=False)
class OpenAICompatibleClient:
    """Calls `<base_url>/chat/completions`; `http` is normally the provider's pooled client."""

    api_key: str
    base_url: str
    http: httpx.AsyncClient | None = None
    timeout_s: float | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    connect_timeout_s: float | None = None
    path: str = "/chat/completions"

    def __repr__(self) -> str:
        return f"OpenAICompatibleClient(base_url={self.base_url!r})"

    def bind(
        self, http: httpx.AsyncClient, timeout_s: float, connect_timeout_s: float | None = None
    ) -> OpenAICompatibleClient:
        """This client, using `http` and the timeouts where it has none of its own."""
        return dataclasses.replace(
            self,
            http=self.http or http,
            timeout_s=self.timeout_s if self.timeout_s else timeout_s,
            connect_timeout_s=self.connect_timeout_s or connect_timeout_s,
        )

    @property
    def url(self) -> str:
        """The chat completions endpoint."""
        return trim_trailing_slash(self.base_url) + self.path

    async def chat(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a non-streaming chat body and return the upstream JSON object."""
        http = self._require_http()
        with _mapped_transport_errors():
            response = await http.post(self.url, json=body, headers=self._headers(), timeout=self._timeout())
        if not response.is_success:
            raise _status_error(response)
        try:
            data = response.json()
        except ValueError:
            raise upstream_malformed("the upstream answered with invalid JSON") from None
        if not isinstance(data, dict):
            raise upstream_malformed("the upstream answered with JSON that is not an object")
        return data

    async def stream_chat(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream a chat body, yielding each SSE chunk as a dict, with usage in the final chunk."""
        async with self._stream(with_stream_usage(body)) as response:
            async for line in response.aiter_lines():
                data = _sse_data(line)
                if data is None:
                    continue
                if data == "[DONE]":
                    return
                yield _decode_chunk(data)

    async def stream_raw(self, body: Mapping[str, Any]) -> AsyncIterator[bytes]:
        """Stream a chat body as-is, yielding the upstream SSE bytes unchanged."""
        async with self._stream(body) as response:
            async for data in response.aiter_bytes():
                yield data

    @asynccontextmanager
    async def _stream(self, body: Mapping[str, Any]) -> AsyncIterator[httpx.Response]:
        http = self._require_http()
        headers = {**self._headers(), "Accept": "text/event-stream"}
        with _mapped_transport_errors():
            async with http.stream("POST", self.url, json=body, headers=headers, timeout=self._timeout()) as response:
                if not response.is_success:
                    await response.aread()
                    raise _status_error(response)
                yield response

    def _require_http(self) -> httpx.AsyncClient:
        if self.http is None:
            raise RuntimeError("OpenAICompatibleClient has no http client: pass http= or bind() one")
        return self.http

    def _headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _timeout(self) -> httpx.Timeout:
        timeout = self.timeout_s or 60.0
        return httpx.Timeout(timeout, connect=self.connect_timeout_s or timeout)


def with_stream_usage(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `body` asking for a streamed answer whose final chunk carries usage."""
    options = body.get("stream_options")
    return {
        **body,
        "stream": True,
        "stream_options": {**(options if isinstance(options, Mapping) else {}), "include_usage": True},
    }


def message_from_chat_completion(response: Mapping[str, Any]) -> UIMessage:
    """The assistant UIMessage in a chat completion: text, reasoning and tool calls."""
    choices = response.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, Mapping) else None
    if not isinstance(message, Mapping):
        raise upstream_malformed("the upstream answer has no choices[0].message")
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    result = build_assistant_message(
        _content_text(message.get("content")), reasoning=reasoning if isinstance(reasoning, str) else None
    )
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            raise upstream_malformed("the upstream sent a tool call without a function")
        result.parts.append(
            ToolCallPart(
                tool_call_id=str(call.get("id") or ""),
                tool_name=str(function.get("name") or ""),
                input=_tool_arguments(function.get("arguments")),
            )
        )
    return result


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def _tool_arguments(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, Mapping):
        return dict(arguments)
    try:
        parsed = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        raise upstream_malformed("the upstream sent tool-call arguments that are not JSON") from None
    if not isinstance(parsed, dict):
        raise upstream_malformed("the upstream sent tool-call arguments that are not a JSON object")
    return parsed


class SSEUsageSniffer:
    """Reads usage out of raw SSE bytes; tolerant of bad lines, since the bytes pass through as-is."""

    def __init__(self) -> None:
        self._buffer = b""
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> None:
        """Consume the next bytes of the stream."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._read_line(line)

    def close(self) -> None:
        """Consume whatever is left after the last newline."""
        self._read_line(self._buffer)
        self._buffer = b""

    def _read_line(self, line: bytes) -> None:
        payload = _sse_data(line.decode("utf-8", errors="replace").rstrip("\r"))
        if not payload or payload == "[DONE]":
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            return
        if isinstance(chunk, dict) and (usage := read_openai_compatible_sse_usage(chunk)) is not None:
            self.usage = usage


@dataclasses.dataclass
class _ToolCallState:
    id: str
    name: str
    arguments: str = ""


class ChatChunkTranslator:
    """Turns OpenAI `chat.completion.chunk`s into AI SDK UI message stream chunks.

    Text and reasoning become `*-start` / `*-delta` / `*-end` parts (switching kind closes the open part);
    tool calls become `tool-input-start` / `tool-input-delta`, then `tool-input-available` at `finish()`.
    """

    def __init__(self) -> None:
        self._open: dict[str, str] = {}
        self._parts = 0
        self._tools: dict[int, _ToolCallState] = {}

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The UI chunks for one upstream chunk (none for usage-only or empty chunks)."""
        choices = chunk.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        delta = first.get("delta") if isinstance(first, Mapping) else None
        if not isinstance(delta, Mapping):
            return []
        out: list[dict[str, Any]] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._delta("reasoning", reasoning, out)
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._delta("text", content, out)
        for call in delta.get("tool_calls") or []:
            self._tool_delta(call, out)
        return out

    def finish(self) -> list[dict[str, Any]]:
        """Close open parts and emit every tool call's complete input."""
        out: list[dict[str, Any]] = [{"type": f"{kind}-end", "id": pid} for kind, pid in self._open.items()]
        self._open.clear()
        for tool in self._tools.values():
            out.append(
                {
                    "type": "tool-input-available",
                    "toolCallId": tool.id,
                    "toolName": tool.name,
                    "input": _tool_arguments(tool.arguments),
                }
            )
        self._tools.clear()
        return out

    def _delta(self, kind: str, text: str, out: list[dict[str, Any]]) -> None:
        other = "text" if kind == "reasoning" else "reasoning"
        if other in self._open:
            out.append({"type": f"{other}-end", "id": self._open.pop(other)})
        if kind not in self._open:
            self._open[kind] = f"{kind}-{self._parts}"
            self._parts += 1
            out.append({"type": f"{kind}-start", "id": self._open[kind]})
        out.append({"type": f"{kind}-delta", "id": self._open[kind], "delta": text})

    def _tool_delta(self, call: Any, out: list[dict[str, Any]]) -> None:
        if not isinstance(call, Mapping):
            raise upstream_malformed("the upstream sent a tool-call delta that is not an object")
        index = call.get("index", 0)
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        tool = self._tools.get(index)
        if tool is None:
            tool = _ToolCallState(id=str(call.get("id") or f"call-{index}"), name=str(function.get("name") or ""))
            self._tools[index] = tool
            out.append({"type": "tool-input-start", "toolCallId": tool.id, "toolName": tool.name})
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            tool.arguments += arguments
            out.append({"type": "tool-input-delta", "toolCallId": tool.id, "inputTextDelta": arguments})
