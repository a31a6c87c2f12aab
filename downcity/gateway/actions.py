"""The wire between the ingress and a provider deployment: the action request, its outcomes, the usage chunk.

Plain pydantic data, so every message crosses a process boundary (a Serve handle call) unchanged.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from downcity.ai.context import CityInfo, UserInfo
from downcity.types import ChargeDraft, UIMessage, Usage

# The chunk type a provider deployment uses to report a stream's usage, charge and time to first byte.
USAGE_CHUNK_TYPE = "data-downcity-usage"


class ActionRequest(BaseModel):
    """One provider action to run, as sent from the ingress to the provider deployment."""

    request_id: str
    pathway: str
    model_id: str
    input: dict[str, Any]
    user: UserInfo
    city: CityInfo
    locals: dict[str, Any] = Field(default_factory=dict)
    job: dict[str, Any] | None = None
    # The caller's total timeout left for this call, in ms (it may only shorten the model's).
    timeout_ms: int | None = None


class Attempts(BaseModel):
    """The upstream attempts an action made (model, status, duration_ms, key) and the key that served it."""

    attempts: list[dict[str, Any]] = Field(default_factory=list)
    key_name: str | None = None


class TextOutcome(Attempts):
    """A text action's result; `charge` is the action's own charge only."""

    output: UIMessage
    usage: Usage = Field(default_factory=Usage)
    charge: ChargeDraft | None = None
    ttfb_ms: int | None = None


class OpenAIOutcome(Attempts):
    """A non-streaming chat/completions result: the OpenAI response body as-is, and its usage."""

    body: dict[str, Any]
    usage: Usage = Field(default_factory=Usage)
    charge: ChargeDraft | None = None
    ttfb_ms: int | None = None


class VideoOutcome(OpenAIOutcome):
    """A video action's JSON result, with the usage and charge the action reported through `ctx.metering`."""
