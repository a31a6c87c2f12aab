"""Message, usage, charge and image-job types shared by providers, the runtime and clients."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Part):
    """Plain text."""

    type: Literal["text"] = "text"
    text: str


class ReasoningPart(_Part):
    """Model reasoning shown separately from the answer."""

    type: Literal["reasoning"] = "reasoning"
    text: str


class FilePart(_Part):
    """A file by URL (http(s) or data:), with its IANA media type."""

    type: Literal["file"] = "file"
    media_type: str = Field(alias="mediaType")
    url: str
    filename: str | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


class ToolCallPart(_Part):
    """A tool invocation requested by the model."""

    type: Literal["tool-call"] = "tool-call"
    tool_call_id: str = Field(alias="toolCallId")
    tool_name: str = Field(alias="toolName")
    input: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


UIPart = Annotated[TextPart | ReasoningPart | FilePart | ToolCallPart, Field(discriminator="type")]


class UIMessage(BaseModel):
    """An AI SDK UI message: an id, a role and its parts."""

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart]
    metadata: dict[str, Any] = Field(default_factory=dict)


class Usage(BaseModel):
    """Usage of one upstream call, normalised: `input_tokens` counts every prompt token, cached
    (`cached_tokens`) and cache-written (`cache_write_tokens`) ones included; `output_tokens` counts
    reasoning tokens too. `images` and `seconds` are the units an image or video action produced."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    images: int = 0
    seconds: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class ChargeDraft(BaseModel):
    """A charge proposed by an action or a `bill` function; the Ledger applies it."""

    amount_microcredits: int = Field(ge=0)
    user_id: str | None = None
    ref: str | None = None
    note: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ActionResult(BaseModel):
    """What a `text` action returns: the output message, its usage and an optional charge."""

    output: UIMessage
    usage: Usage = Field(default_factory=Usage)
    charge: ChargeDraft | None = None


JobStatus = Literal["queued", "running", "succeeded", "failed"]
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset({"succeeded", "failed"})
# The most images one `/v1/ai/image/create` may ask for (`count`).
MAX_IMAGE_COUNT = 8


class ImageJobResult(BaseModel):
    """The one shape every provider normalises image-job upstream responses into."""

    job_id: str
    status: JobStatus
    result: UIMessage | None = None
    error: str | None = None
    message: str | None = None
    poll_after_ms: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] = Field(default_factory=dict)
