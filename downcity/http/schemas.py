"""Request bodies of the user routes; unknown fields pass through to providers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from downcity.errors import invalid
from downcity.types import MAX_IMAGE_COUNT


class TextRequest(BaseModel):
    """Body of `/v1/ai/text` and `/v1/ai/stream`."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, min_length=1)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: dict[str, Any] | list[dict[str, Any]] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_input(self) -> TextRequest:
        if (self.prompt is None) == (self.messages is None):
            raise invalid("give exactly one of 'prompt' or 'messages'", "prompt")
        if self.messages is not None and not self.messages:
            raise invalid("'messages' must not be empty", "messages")
        return self


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat/completions body; only what routing needs is checked here."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False


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

    job_id: str = Field(min_length=1)


class VideoRequest(BaseModel):
    """Body of `/v1/ai/video`."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, min_length=1)
    prompt: str = Field(min_length=1)
