"""The provider contract, read top to bottom: context → hooks → provider (+ ModelConfig) → service → federation."""

from downcity.ai.context import CityInfo, Context, Metering, ModelView, UserInfo
from downcity.ai.federation import Federation
from downcity.ai.hooks import Hooks
from downcity.ai.openai_client import OpenAICompatibleClient
from downcity.ai.provider import FallbackRule, MediaInfo, ModelConfig, Provider
from downcity.ai.service import AIService

__all__ = [
    "AIService",
    "CityInfo",
    "Context",
    "FallbackRule",
    "Federation",
    "Hooks",
    "MediaInfo",
    "Metering",
    "ModelConfig",
    "ModelView",
    "OpenAICompatibleClient",
    "Provider",
    "UserInfo",
]
