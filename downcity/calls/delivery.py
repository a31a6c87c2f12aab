"""What a stream delivered to its client: the text (to bill an early end) and the final frame (held back).

The OpenAI stream is forwarded as the upstream's bytes, whole SSE events at a time; its `data: [DONE]` event is
held back until the call is settled, so a client that sees `[DONE]` knows the charge is durable. Parsing what
was delivered happens only when a stream ends early.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from downcity.calls.metering import count_prompt_tokens, count_tokens
from downcity.types import Usage

_DONE_EVENT = b"data: [DONE]"
_EVENT_END = b"\n\n"
# UI stream chunks that frame content rather than carry it.
_UI_FRAMING = frozenset(
    {"start", "start-step", "finish-step", "text-start", "text-end", "reasoning-start", "reasoning-end"}
)


class Delivery:
    """The content one stream has sent so far."""

    def __init__(self) -> None:
        self._ui_text: list[str] = []
        self._ui_content = False
        self._events: list[bytes] = []
        self._pending = b""
        self._held = b""

    def add_ui_chunks(self, chunks: list[dict[str, Any]]) -> None:
        """UI message stream chunks about to be sent."""
        for chunk in chunks:
            kind = chunk.get("type")
            if kind == "text-delta":
                self._ui_text.append(str(chunk.get("delta", "")))
            if kind not in _UI_FRAMING:
                self._ui_content = True

    def add_openai_bytes(self, data: bytes) -> bytes:
        """Upstream SSE bytes in; the complete events to send now out (`[DONE]` and partial events held)."""
        buffer = self._pending + data
        cut = buffer.rfind(_EVENT_END)
        if cut < 0:
            self._pending = buffer
            return b""
        ready, self._pending = buffer[: cut + len(_EVENT_END)], buffer[cut + len(_EVENT_END) :]
        sent = []
        for event in ready.split(_EVENT_END)[:-1]:
            whole = event + _EVENT_END
            if self._held or event.strip() == _DONE_EVENT:
                self._held += whole
                continue
            self._events.append(event)
            sent.append(whole)
        return b"".join(sent)

    def held_back(self) -> bytes:
        """What is left to send once the call is settled: `[DONE]` and anything after or unfinished."""
        return self._pending + self._held

    @property
    def text(self) -> str:
        """The assistant text delivered so far."""
        if self._ui_text:
            return "".join(self._ui_text)
        return "".join(_openai_text(event) for event in self._events)

    @property
    def delivered(self) -> bool:
        """Whether any content (not just framing) reached the client."""
        return self._ui_content or any(_openai_has_content(event) for event in self._events)

    def estimate(self, body: Mapping[str, Any], model_id: str) -> Usage:
        """Tokens metered from the request's prompt and the delivered text."""
        return Usage(
            input_tokens=count_prompt_tokens(body, model_id),
            output_tokens=count_tokens(self.text, model_id),
        )


def _openai_delta(event: bytes) -> dict[str, Any]:
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            chunk = json.loads(line[5:])
        except ValueError:
            return {}
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            delta = choices[0].get("delta")
            return delta if isinstance(delta, dict) else {}
    return {}


def _openai_text(event: bytes) -> str:
    content = _openai_delta(event).get("content")
    return content if isinstance(content, str) else ""


def _openai_has_content(event: bytes) -> bool:
    delta = _openai_delta(event)
    return bool(delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"))
