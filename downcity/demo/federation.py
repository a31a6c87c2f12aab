"""The DEMO federation `downcity up --demo` serves: models backed by the local demo upstream.

Prices are illustrative: 1 microcredit per input token and 2 per output token for chat, 20,000 per image.
"""

from __future__ import annotations

import os
from typing import Any

from downcity.ai.context import Context
from downcity.ai.federation import Federation
from downcity.ai.openai_client import OpenAICompatibleClient
from downcity.ai.provider import Provider
from downcity.ai.service import AIService
from downcity.types import ChargeDraft

DEMO_UPSTREAM_ENV = "DOWNCITY_DEMO_UPSTREAM_URL"
DEMO_KEY_ENV = "DEMO_API_KEY"
DEFAULT_DEMO_UPSTREAM = "http://127.0.0.1:9000/v1"


class DemoProvider(Provider):
    """An OpenAI-compatible provider pointed at the demo upstream."""

    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        """A client for the demo upstream's chat/completions."""
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)


def token_price(ctx: Context, output: Any) -> ChargeDraft:
    """1 microcredit per input token, 2 per output token."""
    usage = ctx.metering.usage
    amount = usage.input_tokens + 2 * usage.output_tokens
    return ChargeDraft(amount_microcredits=amount, ref=ctx.request_id, note=f"{ctx.model.id} tokens")


def build_demo_federation() -> Federation:
    """The demo catalog: a default chat model, a vision model it falls back to for images."""
    provider = DemoProvider(
        "demo",
        env=[DEMO_KEY_ENV],
        env_key=DEMO_KEY_ENV,
        base_url=os.environ.get(DEMO_UPSTREAM_ENV, DEFAULT_DEMO_UPSTREAM),
    )
    vision = provider.model(
        "demo-vision",
        name="Demo Vision",
        description="Demo model that accepts images.",
        media=("image/*",),
        bill=token_price,
        hold_microcredits=5_000,
    )
    chat = provider.model(
        "demo-chat",
        name="Demo Chat",
        description="Demo text model (echoes the prompt).",
        default=("text", "stream", "openai"),
        fallback=[{"match": lambda media: media.media_type.startswith("image/"), "model": vision}],
        bill=token_price,
        hold_microcredits=5_000,
    )
    ai = AIService().use(chat).use(vision)
    return Federation(name="downcity-demo").use(ai)


federation = build_demo_federation()
