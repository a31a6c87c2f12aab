"""The DEMO federation `downcity up --demo` serves: models backed by the local demo upstream.

Prices are illustrative: 1 microcredit per input token and 2 per output token for chat, 20,000 per image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from downcity.ai.context import Context
from downcity.ai.federation import Federation
from downcity.ai.messages import build_image_message, trim_trailing_slash
from downcity.ai.openai_compatible import OpenAICompatibleProvider
from downcity.ai.provider import Provider
from downcity.ai.resilience import Retry
from downcity.ai.service import AIService
from downcity.errors import DowncityHTTPError
from downcity.types import MAX_IMAGE_COUNT, ChargeDraft, ImageJobResult, UIMessage

DEMO_UPSTREAM_ENV = "DOWNCITY_DEMO_UPSTREAM_URL"
DEMO_KEY_ENV = "DEMO_API_KEY"
DEFAULT_DEMO_UPSTREAM = "http://127.0.0.1:9000/v1"
IMAGE_PRICE = 20_000


class DemoImages(Provider):
    """The demo upstream's async image jobs: `POST /images/jobs`, then `GET /images/jobs/{id}` until done."""

    async def image_create(self, ctx: Context) -> ImageJobResult:
        """Queue an upstream job; Downcity keeps its id in the job state for `image_fetch`."""
        body = {"model": ctx.model.upstream_model, "prompt": ctx.input["prompt"], "n": ctx.input.get("count") or 1}
        job = await self._call(ctx, "POST", "/images/jobs", body)
        return ImageJobResult(job_id=job["id"], status=job["status"], poll_after_ms=job.get("poll_after_ms"))

    async def image_fetch(self, ctx: Context) -> ImageJobResult:
        """Poll the upstream job and normalise its answer."""
        job_id = str((ctx.job or {})["state"]["provider_job_id"])
        job = await self._call(ctx, "GET", f"/images/jobs/{job_id}", None)
        if job["status"] == "succeeded":
            message = build_image_message([image["url"] for image in job["data"]])
            return ImageJobResult(job_id=job_id, status="succeeded", result=message)
        if job["status"] == "failed":
            return ImageJobResult(job_id=job_id, status="failed", error=job["error"]["message"])
        return ImageJobResult(job_id=job_id, status=job["status"], poll_after_ms=job.get("poll_after_ms"))

    async def _call(self, ctx: Context, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        url = trim_trailing_slash(self.base_url or "") + path
        headers = {"Authorization": f"Bearer {ctx.env(DEMO_KEY_ENV)}"}
        response = await ctx.http.request(method, url, json=body, headers=headers)
        if not response.is_success:
            raise DowncityHTTPError(502, "upstream_error", f"demo upstream returned HTTP {response.status_code}")
        data: dict[str, Any] = response.json()
        return data


def token_price(ctx: Context, output: Any) -> ChargeDraft:
    """1 microcredit per input token, 2 per output token."""
    usage = ctx.metering.usage
    amount = usage.input_tokens + 2 * usage.output_tokens
    return ChargeDraft(amount_microcredits=amount, ref=ctx.request_id, note=f"{ctx.model.id} tokens")


def image_price(ctx: Context, output: UIMessage) -> ChargeDraft:
    """20,000 microcredits per generated image."""
    images = sum(1 for part in output.parts if part.type == "file")
    return ChargeDraft(amount_microcredits=IMAGE_PRICE * images, ref=ctx.request_id, note=f"{images} image(s)")


def image_hold(body: Mapping[str, Any]) -> int:
    """The most one create may cost: the price of every image it asks for (`count`, 1 by default)."""
    count = body.get("count", 1)
    return IMAGE_PRICE * (count if isinstance(count, int) and 1 <= count <= MAX_IMAGE_COUNT else MAX_IMAGE_COUNT)


def build_demo_federation(retry: Retry | None = None) -> Federation:
    """The demo catalog: a default chat model, a vision model it falls back to for images, an image model.

    `retry` configures the chat provider's retries (`retrying_federation` has them, for the benchmark).
    """
    base_url = os.environ.get(DEMO_UPSTREAM_ENV, DEFAULT_DEMO_UPSTREAM)
    provider = OpenAICompatibleProvider(
        "demo", env=[DEMO_KEY_ENV], env_key=DEMO_KEY_ENV, base_url=base_url, retry=retry
    )
    # No env_key: it would give the image provider an auto-passthrough /chat/completions it has no use for.
    images = DemoImages("demo-images", env=[DEMO_KEY_ENV], base_url=base_url)
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
    image = images.model(
        "demo-image",
        name="Demo Image",
        description="Demo async image jobs (a 1x1 PNG per image).",
        default="image",
        bill=image_price,
        hold_microcredits=image_hold,
    )
    ai = AIService().use(chat).use(vision).use(image)
    return Federation(name="downcity-demo").use(ai)


federation = build_demo_federation()
# The same catalog with retries configured: what `bench/serve_bench.py --retries` compares the text path against.
retrying_federation = build_demo_federation(Retry(attempts=3))
