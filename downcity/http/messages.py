"""Typed request messages: OpenAI chat messages and AI SDK UI messages, checked before any upstream call.

Roles, content and part types and tool calls are typed; fields these models do not name pass through,
since OpenAI-compatible upstreams take vendor extensions (`cache_control`, `reasoning_content`, `prefix`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

NonEmpty = Annotated[str, Field(min_length=1)]
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
SYSTEM_ROLES = frozenset({"system", "developer"})


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# OpenAI chat content parts.
class TextContent(_Open):
    """`{"type": "text", "text": …}`."""

    type: Literal["text"]
    text: str


class ImageURL(_Open):
    """An image by URL or data URL."""

    url: NonEmpty
    detail: Literal["auto", "low", "high"] | None = None


class ImageContent(_Open):
    """`{"type": "image_url", "image_url": {url, detail?}}`."""

    type: Literal["image_url"]
    image_url: ImageURL


class InputImageContent(_Open):
    """`{"type": "input_image", "image_url" | "file_id", "detail"?}`, the Responses API's image part."""

    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(_Open):
    """Base64 audio and its format."""

    data: NonEmpty
    format: NonEmpty


class AudioContent(_Open):
    """`{"type": "input_audio", "input_audio": {data, format}}`."""

    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(_Open):
    """A file by inline data or by uploaded id."""

    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FileContent(_Open):
    """`{"type": "file", "file": {file_data? | file_id?, filename?}}`."""

    type: Literal["file"]
    file: FileRef


class RefusalContent(_Open):
    """`{"type": "refusal", "refusal": …}` in an assistant message."""

    type: Literal["refusal"]
    refusal: str


TextParts = Annotated[list[TextContent], Field(min_length=1)]
UserPart = Annotated[
    TextContent | ImageContent | InputImageContent | AudioContent | FileContent, Field(discriminator="type")
]
AssistantPart = Annotated[TextContent | RefusalContent, Field(discriminator="type")]


class FunctionCall(_Open):
    """The function a tool call names, with its JSON-encoded arguments."""

    name: NonEmpty
    arguments: str


class FunctionToolCall(_Open):
    """`{"id", "type": "function", "function": {name, arguments}}`."""

    id: NonEmpty
    type: Literal["function"]
    function: FunctionCall


class CustomCall(_Open):
    """The custom tool a call names, with its free-form input."""

    name: NonEmpty
    input: str


class CustomToolCall(_Open):
    """`{"id", "type": "custom", "custom": {name, input}}`."""

    id: NonEmpty
    type: Literal["custom"]
    custom: CustomCall


ToolCall = Annotated[FunctionToolCall | CustomToolCall, Field(discriminator="type")]


class SystemMessage(_Open):
    """Instructions from the application."""

    role: Literal["system"]
    content: str | TextParts
    name: str | None = None


class DeveloperMessage(_Open):
    """Instructions from the application (newer models' name for system)."""

    role: Literal["developer"]
    content: str | TextParts
    name: str | None = None


class UserMessage(_Open):
    """What the end user said: text, images, audio or files."""

    role: Literal["user"]
    content: str | Annotated[list[UserPart], Field(min_length=1)]
    name: str | None = None


class AssistantMessage(_Open):
    """An earlier model turn: content, a refusal, or tool calls."""

    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls and self.function_call is None and self.refusal is None:
            raise ValueError("an assistant message needs content, tool_calls or a refusal")
        return self


class ToolMessage(_Open):
    """A tool's answer to the call `tool_call_id`."""

    role: Literal["tool"]
    content: str | TextParts
    tool_call_id: NonEmpty


class FunctionMessage(_Open):
    """A function's answer (OpenAI's deprecated form of a tool message)."""

    role: Literal["function"]
    content: str | None
    name: NonEmpty


ChatMessage = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


# AI SDK UI message parts.
class UITextPart(_Open):
    """`{"type": "text", "text": …}`."""

    type: Literal["text"]
    text: str


class UIReasoningPart(_Open):
    """`{"type": "reasoning", "text": …}`."""

    type: Literal["reasoning"]
    text: str


class UIFilePart(_Open):
    """`{"type": "file", "mediaType", "url", "filename"?}`."""

    model_config = ConfigDict(extra="allow", validate_by_name=True, serialize_by_alias=True)

    type: Literal["file"]
    media_type: NonEmpty = Field(alias="mediaType")
    url: NonEmpty
    filename: str | None = None


class UITranscriptPart(_Open):
    """Tool, source, step and data parts: transcript details that pass through as given."""

    type: Annotated[str, Field(pattern=r"^(tool-\S+|dynamic-tool|source-url|source-document|step-start|data-\S+)$")]


def _ui_part_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    return kind if kind in ("text", "reasoning", "file") else "transcript"


UIPart = Annotated[
    Annotated[UITextPart, Tag("text")]
    | Annotated[UIReasoningPart, Tag("reasoning")]
    | Annotated[UIFilePart, Tag("file")]
    | Annotated[UITranscriptPart, Tag("transcript")],
    Discriminator(_ui_part_kind),
]


class UIMessage(_Open):
    """An AI SDK UI message: a role and its parts."""

    id: str | None = None
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart]
    metadata: dict[str, Any] | None = None


def _message_kind(value: Any) -> str:
    has_parts = "parts" in value if isinstance(value, dict) else isinstance(value, UIMessage)
    return "ui" if has_parts else "chat"


# `/text` and `/stream` take either shape: a message with `parts` is a UI message, any other a chat message.
TextMessage = Annotated[
    Annotated[UIMessage, Tag("ui")] | Annotated[ChatMessage, Tag("chat")],
    Discriminator(_message_kind),
]


# Tool definitions.
class FunctionDefinition(_Open):
    """A function the model may call, with a JSON Schema for its arguments."""

    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Open):
    """`{"type": "function", "function": {name, description?, parameters?, strict?}}`."""

    type: Literal["function"]
    function: FunctionDefinition


class CustomDefinition(_Open):
    """A custom tool taking free-form input."""

    name: ToolName
    description: str | None = None


class CustomTool(_Open):
    """`{"type": "custom", "custom": {name, description?}}`."""

    type: Literal["custom"]
    custom: CustomDefinition


Tool = Annotated[FunctionTool | CustomTool, Field(discriminator="type")]


class ToolSpec(_Open):
    """An AI SDK style tool, keyed by its name: `{description?, parameters? | inputSchema?}`."""

    description: str | None = None
    parameters: dict[str, Any] | None = None
    input_schema: dict[str, Any] | None = Field(default=None, alias="inputSchema")

    model_config = ConfigDict(extra="allow", validate_by_name=True, serialize_by_alias=True)
