"""`POST /v1/chat/completions` of the demo upstream: a deterministic echo with fault injection.

Markers in the last user message: `[[fail:NNN]]` answers HTTP NNN (only the first N times a text is sent with
`[[fail-times:N]]`; with `Retry-After: S` or `retry-after-ms: MS` from `[[retry-after:S]]` /
`[[retry-after-ms:MS]]`), `[[sleep:MS]]` waits before answering, `[[drop]]` / `[[drop:N]]` cuts a stream after
2 / N events, `[[slow-stream:MS]]` spaces events, `[[malformed]]` sends invalid JSON. A key ending in `-401`,
`-403` or `-429` is refused with that status.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from downcity.demo.recording import RequestLog
from downcity.demo.wire import (
    bearer_key,
    dumps,
    error_response,
    json_response,
    markers,
    read_json_object,
    required_str,
)
from downcity.errors import bad_request

_WORD = re.compile(r"\S+\s*")
_IMAGE_PART_TYPES = frozenset({"image_url", "input_image"})
_DONE = b"data: [DONE]\n\n"
_NOT_JSON_EVENT = b"data: {this is not json\n\n"
_SSE_HEADERS = {"cache-control": "no-cache"}
# `[[drop]]` cuts a stream after this many events (the role chunk and the first word); `[[drop:N]]` after N.
_DROP_AFTER_EVENTS = 2
_KEY_FAULTS = frozenset({"-401", "-403", "-429"})
_REMEMBERED_TEXTS = 10_000


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of an OpenAI chat body the demo acts on."""

    model: str
    prompt_tokens: int
    last_user_text: str
    stream: bool
    include_usage: bool


def content_text(content: object, field: str) -> str:
    """Flatten message content to text; image parts read as `[image]`, other parts are skipped."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of content parts", field=field)
    pieces: list[str] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request("a text part needs a string 'text'", field=f"{field}[{index}].text")
            pieces.append(text)
        elif kind in _IMAGE_PART_TYPES:
            pieces.append("[image]")
        elif not isinstance(kind, str):
            raise bad_request("each content part needs a string 'type'", field=f"{field}[{index}]")
    return " ".join(pieces)


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    """Validate an OpenAI chat body, naming the offending field."""
    model = required_str(body, "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", field="messages")
    prompt_tokens = 0
    last_user_text: str | None = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request("each message must be an object", field=f"messages[{index}]")
        text = content_text(message.get("content"), f"messages[{index}].content")
        prompt_tokens += len(text.split())
        if message.get("role") == "user":
            last_user_text = text
    if last_user_text is None:
        raise bad_request("'messages' needs at least one user message", field="messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", field="stream")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", field="stream_options")
    include_usage = options.get("include_usage") is True
    return ChatRequest(model, prompt_tokens, last_user_text, stream, include_usage)


@dataclass(frozen=True, slots=True)
class TokenDetail:
    """Token classes a reply reports, from the markers `[[cached:N]]`, `[[cache-write:N]]`, `[[reasoning:N]]`."""

    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0

    @classmethod
    def of(cls, found: dict[str, int | None]) -> TokenDetail:
        """The detail the markers found in a prompt ask for."""
        return cls(found.get("cached") or 0, found.get("cache-write") or 0, found.get("reasoning") or 0)


def usage(prompt_tokens: int, completion_tokens: int, detail: TokenDetail | None = None) -> dict[str, Any]:
    """OpenAI usage with the detail fields real providers send.

    Cached and cache-written tokens are part of the prompt (at most all of it), as OpenAI counts them; the
    cache write is reported in Anthropic's field. Reasoning tokens are added to the completion tokens.
    """
    detail = detail or TokenDetail()
    cached = min(detail.cached, prompt_tokens)
    written = min(detail.cache_write, prompt_tokens - cached)
    completion_tokens += detail.reasoning
    body: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": detail.reasoning},
    }
    if written:
        body["cache_creation_input_tokens"] = written
    return body


def completion_body(
    chat: ChatRequest, reply: str, completion_id: str, created: int, detail: TokenDetail | None = None
) -> dict[str, Any]:
    """The non-streaming `chat.completion` object."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(chat.prompt_tokens, len(reply.split()), detail),
    }


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


def stream_events(
    chat: ChatRequest, reply: str, completion_id: str, created: int, detail: TokenDetail | None = None
) -> list[bytes]:
    """Every SSE event of a streamed reply: role, one delta per word, stop, optional usage, [DONE]."""
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": chat.model}

    def chunk(delta: dict[str, str], finish_reason: str | None) -> bytes:
        return _event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    words = _WORD.findall(reply)
    events = [chunk({"role": "assistant", "content": ""}, None)]
    events.extend(chunk({"content": word}, None) for word in words)
    events.append(chunk({}, "stop"))
    if chat.include_usage:
        events.append(_event({**head, "choices": [], "usage": usage(chat.prompt_tokens, len(words), detail)}))
    events.append(_DONE)
    return events


class PacedEventStream:
    """SSE events written one at a time with a gap, optionally cut off by dropping the connection."""

    def __init__(self, events: list[bytes], gap_s: float, complete: bool) -> None:
        self.events = events
        self.gap_s = gap_s
        self.complete = complete

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index, event in enumerate(self.events):
            if index and self.gap_s:
                await asyncio.sleep(self.gap_s)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        # Returning without the final body message makes the server close the connection mid-stream.
        if self.complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _stream_response(events: list[bytes], found: dict[str, int | None]) -> Response | PacedEventStream:
    if "malformed" in found:
        events = [*events[:2], _NOT_JSON_EVENT, _DONE]
    complete = "drop" not in found
    if not complete:
        events = events[: found["drop"] or _DROP_AFTER_EVENTS]
    gap_ms = found.get("slow-stream") or 0
    if complete and not gap_ms:
        return Response(b"".join(events), media_type="text/event-stream", headers=_SSE_HEADERS)
    return PacedEventStream(events, gap_ms / 1000, complete)


def _injected_failure(status: int, found: dict[str, int | None]) -> Response:
    if not 400 <= status <= 599:
        raise bad_request("[[fail:NNN]] needs an HTTP error status between 400 and 599", field="messages")
    response = error_response(status, "demo_fault", f"demo upstream: injected failure with HTTP {status}")
    if found.get("retry-after") is not None:
        response.headers["retry-after"] = str(found["retry-after"])
    if found.get("retry-after-ms") is not None:
        response.headers["retry-after-ms"] = str(found["retry-after-ms"])
    return response


def _key_fault(key: str) -> Response | None:
    """A key whose value ends in `-401`, `-403` or `-429` is refused with that status (to try key pools)."""
    status = int(key[-3:]) if key[-4:] in _KEY_FAULTS else None
    if status is None:
        return None
    return error_response(status, "demo_fault", f"demo upstream: this key is refused with HTTP {status}")


class ChatCompletions:
    """The chat completions route, recording each caller's key."""

    def __init__(self, log: RequestLog) -> None:
        self.log = log
        # How many requests carrying `[[fail-times:N]]` each text failed so far (oldest texts forgotten first).
        self._failed: OrderedDict[str, int] = OrderedDict()

    def _should_fail(self, text: str, found: dict[str, int | None]) -> bool:
        times = found.get("fail-times")
        if times is None:
            return True
        failed = self._failed.pop(text, 0)
        self._failed[text] = failed + 1
        while len(self._failed) > _REMEMBERED_TEXTS:
            self._failed.popitem(last=False)
        return failed < times

    async def create(self, request: Request) -> Response | PacedEventStream:
        """Answer `Echo: <last user text>` as JSON or SSE, honouring fault markers."""
        key = bearer_key(request)
        body = await read_json_object(request)
        model = body.get("model")
        self.log.record(request.url.path, key, model if isinstance(model, str) else None)
        refused = _key_fault(key)
        if refused is not None:
            return refused
        chat = parse_chat_request(body)
        found = markers(chat.last_user_text)
        sleep_ms = found.get("sleep")
        if sleep_ms:
            await asyncio.sleep(sleep_ms / 1000)
        fail_status = found.get("fail")
        if fail_status is not None and self._should_fail(chat.last_user_text, found):
            return _injected_failure(fail_status, found)
        reply = "Echo: " + chat.last_user_text
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        detail = TokenDetail.of(found)
        if chat.stream:
            return _stream_response(stream_events(chat, reply, completion_id, created, detail), found)
        if "malformed" in found:
            return Response(b"this is not json {", media_type="application/json")
        return json_response(completion_body(chat, reply, completion_id, created, detail))
