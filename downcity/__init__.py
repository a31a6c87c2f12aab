"""Downcity: an AI infrastructure runtime on Ray. This module is the operator-facing public API."""

from downcity.ai.context import CityInfo, Context, Metering, UserInfo
from downcity.ai.federation import Federation
from downcity.ai.federation_file import FederationFileError, load_federation_file
from downcity.ai.helpers import normalize_openai_compatible_body, read_required_env, resolve_upstream_model
from downcity.ai.hooks import Hooks
from downcity.ai.messages import (
    build_assistant_message,
    build_image_message,
    build_tool_set,
    normalize_ai_usage,
    read_openai_compatible_sse_usage,
    trim_trailing_slash,
)
from downcity.ai.openai_client import OpenAICompatibleClient
from downcity.ai.openai_compatible import OpenAICompatibleProvider
from downcity.ai.pricing import Price
from downcity.ai.provider import FallbackRule, MediaInfo, ModelConfig, Provider
from downcity.ai.resilience import Breaker, Failure, Retry, Timeouts
from downcity.ai.service import AIService
from downcity.errors import DowncityHTTPError
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
    "Breaker",
    "ChargeDraft",
    "CityInfo",
    "Context",
    "DowncityHTTPError",
    "Failure",
    "FallbackRule",
    "Federation",
    "FederationFileError",
    "FilePart",
    "Hooks",
    "ImageJobResult",
    "MediaInfo",
    "Metering",
    "ModelConfig",
    "OpenAICompatibleClient",
    "OpenAICompatibleProvider",
    "Price",
    "Provider",
    "ReasoningPart",
    "Retry",
    "Settings",
    "TextPart",
    "Timeouts",
    "ToolCallPart",
    "UIMessage",
    "Usage",
    "UserInfo",
    "build_assistant_message",
    "build_image_message",
    "build_tool_set",
    "load_federation_file",
    "normalize_ai_usage",
    "normalize_openai_compatible_body",
    "read_openai_compatible_sse_usage",
    "read_required_env",
    "resolve_upstream_model",
    "trim_trailing_slash",
]
