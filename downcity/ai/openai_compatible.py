"""`OpenAICompatibleProvider`: an upstream speaking the OpenAI API (OpenAI, DeepSeek, Groq, vLLM, Ollama…)."""

from __future__ import annotations

from downcity.ai.openai_client import OpenAICompatibleClient
from downcity.ai.provider import Provider


class OpenAICompatibleProvider(Provider):
    """Default text and stream actions over `/chat/completions`; with `base_url` and `env_key`, auto passthrough."""

    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        """The upstream's chat/completions client."""
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)
