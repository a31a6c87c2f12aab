"""The provider side of a call: the wire messages, the runner of one provider's actions, and the gateway seam."""

from downcity.gateway.actions import USAGE_CHUNK_TYPE, ActionRequest, OpenAIOutcome, TextOutcome, VideoOutcome
from downcity.gateway.ports import LocalGateway, ProviderGateway
from downcity.gateway.runner import ProviderRunner

__all__ = [
    "USAGE_CHUNK_TYPE",
    "ActionRequest",
    "LocalGateway",
    "OpenAIOutcome",
    "ProviderGateway",
    "ProviderRunner",
    "TextOutcome",
    "VideoOutcome",
]
