"""AI SDK UI message stream protocol framing (`data: <json>\\n\\n`, ending `data: [DONE]`)."""

from __future__ import annotations

import json
from typing import Any

from downcity.secrets import SCRUBBER

UI_STREAM_HEADERS = {
    "x-vercel-ai-ui-message-stream": "v1",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
DONE = b"data: [DONE]\n\n"


def frame(chunk: dict[str, Any]) -> bytes:
    """One SSE event carrying one protocol chunk."""
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def frames(chunks: list[dict[str, Any]]) -> bytes:
    """Several chunks as one write."""
    return b"".join(frame(chunk) for chunk in chunks)


def error_frame(error_type: str, message: str) -> bytes:
    """The error chunk that ends a failed stream (never followed by `finish`), with any configured secret scrubbed."""
    return frame({"type": "error", "errorText": SCRUBBER.scrub(f"{error_type}: {message}")})
