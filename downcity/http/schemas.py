"""Request bodies of the user routes; unknown top-level fields pass through to providers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from downcity.errors import invalid
from downcity.http.messages import SYSTEM_ROLES, ChatMessage, TextMessage, Tool, ToolName, ToolSpec
from downcity.types import MAX_IMAGE_COUNT

# Bounds a 32-bit upstream field can take; larger token budgets are caller faults, not upstream ones.
MAX_TOKENS = 2**31 - 1


def _needs_a_turn(messages: Sequence[Any]) -> None:
    if all(message.role in SYSTEM_ROLES for message in messages):
        raise invalid("messages: needs at least one message that is not system or developer", "messages")


class TextRequest(BaseModel):
    """Body of `/v1/ai/text` and `/v1/ai/stream`."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, min_length=1)
    prompt: str | None = None
    system: str | None = None
    messages: list[TextMessage] | None = None
    tools: dict[ToolName, ToolSpec] | list[Tool] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _one_input(self) -> TextRequest:
        if (self.prompt is None) == (self.messages is None):
            raise invalid("give exactly one of 'prompt' or 'messages'", "prompt")
        if self.messages is not None:
            if not self.messages:
                raise invalid("'messages' must not be empty", "messages")
            _needs_a_turn(self.messages)
        return self


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat/completions body: messages and tools typed, other OpenAI parameters passed through."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, min_length=1)
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    tools: list[Tool] | None = None
    stream: bool = False
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _has_a_turn(self) -> ChatCompletionRequest:
        _needs_a_turn(self.messages)
        return self


class ImageCreateRequest(BaseModel):
    """Body of `/v1/ai/image/create`."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, min_length=1)
    prompt: str = Field(min_length=1)
    ratio: str | None = None
    size: str | None = None
    quality: str | None = None
    count: int | None = Field(default=None, ge=1, le=MAX_IMAGE_COUNT)


class ImageResultRequest(BaseModel):
    """Body of `/v1/ai/image/result`."""

    job_id: str = Field(min_length=1, max_length=200)


class VideoRequest(BaseModel):
    """Body of `/v1/ai/video`."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, min_length=1)
    prompt: str = Field(min_length=1)
