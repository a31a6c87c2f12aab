"""Downcity: an AI infrastructure runtime on Ray. This module is the operator-facing public API."""

from downcity.context import CityInfo, Context, Metering, UserInfo
from downcity.errors import DowncityHTTPError
from downcity.federation import Federation
from downcity.helpers import (
    build_assistant_message,
    build_image_message,
    build_tool_set,
    normalize_ai_usage,
    normalize_openai_compatible_body,
    read_openai_compatible_sse_usage,
    read_required_env,
    resolve_upstream_model,
    trim_trailing_slash,
)
from downcity.hooks import Hooks
from downcity.model import FallbackRule, MediaInfo, ModelConfig
from downcity.openai_client import OpenAICompatibleClient
from downcity.provider import Provider
from downcity.service import AIService
from downcity.settings import Settings
from downcity.types import (
    ActionResult,
    ChargeDraft,
    FilePart,
    ImageJobResult,
    ReasoningPart,
    TextPart,
    ToolCallPart,
    UIMessage,
    Usage,
)

__all__ = [
    "AIService",
    "ActionResult",
    "ChargeDraft",
    "CityInfo",
    "Context",
    "DowncityHTTPError",
    "FallbackRule",
    "Federation",
    "FilePart",
    "Hooks",
    "ImageJobResult",
    "MediaInfo",
    "Metering",
    "ModelConfig",
    "OpenAICompatibleClient",
    "Provider",
    "ReasoningPart",
    "Settings",
    "TextPart",
    "ToolCallPart",
    "UIMessage",
    "Usage",
    "UserInfo",
    "build_assistant_message",
    "build_image_message",
    "build_tool_set",
    "normalize_ai_usage",
    "normalize_openai_compatible_body",
    "read_openai_compatible_sse_usage",
    "read_required_env",
    "resolve_upstream_model",
    "trim_trailing_slash",
]
