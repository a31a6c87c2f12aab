"""An example Federation: what an operator writes.

- `deepseek`: an OpenAI-compatible upstream (DeepSeek-style) with `passthrough_model`, so
  `/v1/ai/chat/completions` is forwarded as-is with the model replaced;
- `local-tools`: a custom provider with its own `text` and `stream` actions (no upstream at all);
- `deepseek-chat` falls back to the vision model `deepseek-vl` when a request carries an image;
- hooks read `ctx.city` and `ctx.user.metadata`: a per-plan model allow-list (402), a quota flag (429),
  and a per-city system prompt that rewrites the input.

Run it with `serve run serve_config.yaml`, or `downcity up --federation examples.federation:federation`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from downcity import (
    AIService,
    ChargeDraft,
    Context,
    DowncityHTTPError,
    Federation,
    OpenAICompatibleClient,
    Provider,
    Usage,
    build_assistant_message,
)

UPSTREAM_URL = os.environ.get("EXAMPLE_UPSTREAM_URL", "http://127.0.0.1:9000/v1")
PREMIUM_MODELS = {"deepseek-vl"}
CITY_SYSTEM_PROMPTS = {"kids": "Answer kindly and simply."}


class DeepSeek(Provider):
    """An OpenAI-compatible upstream; `create_client` gives default text and stream actions."""

    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        """The upstream's chat/completions client."""
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)


class LocalTools(Provider):
    """A custom upstream: text and stream actions written by hand, charging per character."""

    async def text(self, ctx: Context) -> dict[str, Any]:
        """Reverse the prompt and charge 10 microcredits per character."""
        reply = self.extract_prompt(ctx.input)[::-1]
        ctx.metering.add_usage(Usage(input_tokens=len(reply.split()), output_tokens=len(reply.split())))
        return {
            "output": build_assistant_message(reply),
            "charge": ChargeDraft(amount_microcredits=10 * len(reply)),
        }

    async def stream(self, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """Stream the reversed prompt word by word."""
        words = self.extract_prompt(ctx.input)[::-1].split()
        yield {"type": "text-start", "id": "t0"}
        for index, word in enumerate(words):
            yield {"type": "text-delta", "id": "t0", "delta": word if index == 0 else f" {word}"}
        yield {"type": "text-end", "id": "t0"}
        ctx.metering.add_usage(Usage(input_tokens=len(words), output_tokens=len(words)))


def per_token(ctx: Context, output: Any) -> ChargeDraft:
    """1 microcredit per input token and 3 per output token."""
    usage = ctx.metering.usage
    return ChargeDraft(amount_microcredits=usage.input_tokens + 3 * usage.output_tokens, ref=ctx.request_id)


deepseek = DeepSeek(
    "deepseek",
    env=["DEEPSEEK_API_KEY"],
    env_key="DEEPSEEK_API_KEY",
    base_url=UPSTREAM_URL,
    passthrough_model="deepseek-chat-v3",
)
local_tools = LocalTools("local-tools")

vision = deepseek.model(
    "deepseek-vl", name="DeepSeek VL", media=("image/*",), bill=per_token, hold_microcredits=2_000
)
chat = deepseek.model(
    "deepseek-chat",
    name="DeepSeek Chat",
    description="General chat; images go to DeepSeek VL.",
    default=("text", "stream", "openai"),
    fallback=[{"match": lambda media: media.media_type.startswith("image/"), "model": vision}],
    bill=per_token,
    hold_microcredits=2_000,
)
reverse = local_tools.model("reverse", name="Reverse", description="Reverses the prompt.")

ai = AIService().use(chat).use(vision).use(reverse)
federation = Federation(name="example").use(ai)


@federation.before
def plan_allow_list(ctx: Context) -> None:
    """Free-plan users may not call premium models."""
    if ctx.model.id in PREMIUM_MODELS and ctx.user.metadata.get("plan", "free") == "free":
        raise DowncityHTTPError(402, "upgrade_required", f"the free plan cannot use {ctx.model.id}")


@federation.before
def quota(ctx: Context) -> None:
    """The product backend flags users who used up their own quota in the token metadata."""
    if ctx.user.metadata.get("quota_exceeded"):
        raise DowncityHTTPError(429, "quota_exceeded", "this user's quota is used up")


@ai.before
def city_system_prompt(ctx: Context) -> None:
    """Some cities add a system prompt to every text call."""
    prompt = CITY_SYSTEM_PROMPTS.get(ctx.city.city_id)
    if prompt and "prompt" in ctx.input:
        ctx.input["messages"] = [
            {"role": "system", "content": prompt},
            {"role": "user", "content": ctx.input.pop("prompt")},
        ]
