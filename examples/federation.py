"""An example Federation: what an operator writes.

- `deepseek`: an OpenAI-compatible upstream (DeepSeek-style) with `passthrough_model`, so
  `/v1/ai/chat/completions` is forwarded as-is with the model replaced;
- `local-tools`: a custom provider with its own `text` and `stream` actions (no upstream at all);
- `deepseek-images`: the upstream's async image jobs (`image_create` + `image_fetch`), billed per image;
- `deepseek-chat` falls back to the vision model `deepseek-vl` when a request carries an image;
- hooks read `ctx.city` and `ctx.user.metadata`: a per-plan model allow-list (402), a quota flag (429),
  and a per-city system prompt that rewrites the input.

Run it with `serve run serve_config.yaml`, or `downcity up --federation examples.federation:federation`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from downcity import (
    AIService,
    ChargeDraft,
    Context,
    DowncityHTTPError,
    Federation,
    ImageJobResult,
    OpenAICompatibleClient,
    Provider,
    UIMessage,
    Usage,
    build_assistant_message,
    build_image_message,
    trim_trailing_slash,
)

UPSTREAM_URL = os.environ.get("EXAMPLE_UPSTREAM_URL", "http://127.0.0.1:9000/v1")
PREMIUM_MODELS = {"deepseek-vl"}
FLAT_PRICE = 500
FRAME_PRICE = 1_000
IMAGE_PRICE = 20_000
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

    async def video(self, ctx: Context) -> dict[str, Any]:
        """A storyboard "video": one frame per word of the reversed prompt, 1,000 microcredits a frame."""
        frames = self.extract_prompt(ctx.input)[::-1].split()
        ctx.metering.set_charge(ChargeDraft(amount_microcredits=FRAME_PRICE * len(frames), note="storyboard frames"))
        return {"frames": frames, "duration_s": len(frames)}


class DeepSeekImages(Provider):
    """The upstream's async image jobs: `POST /images/jobs`, then `GET /images/jobs/{id}` until done."""

    async def image_create(self, ctx: Context) -> ImageJobResult:
        """Queue an upstream job; Downcity keeps its id in the job state for `image_fetch`."""
        body = {"model": ctx.model.upstream_model, "prompt": ctx.input["prompt"], "n": ctx.input.get("count", 1)}
        if ctx.input.get("size"):
            body["size"] = ctx.input["size"]
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
        headers = {"Authorization": f"Bearer {ctx.env(self.env_key or '')}"}
        response = await ctx.http.request(method, url, json=body, headers=headers)
        if not response.is_success:
            raise DowncityHTTPError(502, "upstream_error", f"upstream returned HTTP {response.status_code}")
        data: dict[str, Any] = response.json()
        return data


def per_image(ctx: Context, output: UIMessage) -> ChargeDraft:
    """20,000 microcredits per generated image."""
    images = sum(1 for part in output.parts if part.type == "file")
    return ChargeDraft(amount_microcredits=IMAGE_PRICE * images, ref=ctx.request_id, note=f"{images} image(s)")


def reverse_hold(input: Mapping[str, Any]) -> int:
    """The most a reverse call may cost: 10 per character as text, or a frame per word as a storyboard."""
    prompt = local_tools.extract_prompt(input)
    return max(10 * len(prompt), FRAME_PRICE * len(prompt.split()))


def image_hold(input: Mapping[str, Any]) -> int:
    """The most a create may cost: the price of every image it asks for (`count`, 1 by default)."""
    count = input.get("count")
    return IMAGE_PRICE * (count if isinstance(count, int) and count > 0 else 1)


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
    timeout_s=float(os.environ.get("DEEPSEEK_TIMEOUT_S", "60")),
)
local_tools = LocalTools("local-tools")
deepseek_images = DeepSeekImages(
    "deepseek-images", env=["DEEPSEEK_API_KEY"], env_key="DEEPSEEK_API_KEY", base_url=UPSTREAM_URL
)

vision = deepseek.model("deepseek-vl", name="DeepSeek VL", media=("image/*",), bill=per_token, hold_microcredits=2_000)
chat = deepseek.model(
    "deepseek-chat",
    name="DeepSeek Chat",
    description="General chat; images go to DeepSeek VL.",
    default=("text", "stream", "openai"),
    fallback=[{"match": lambda media: media.media_type.startswith("image/"), "model": vision}],
    bill=per_token,
    hold_microcredits=2_000,
)
flat = deepseek.model(
    "deepseek-flat",
    name="DeepSeek Flat",
    description="DeepSeek Chat at a flat 500 microcredits a call, held before the call.",
    bill=lambda ctx, output: ChargeDraft(amount_microcredits=FLAT_PRICE, ref=ctx.request_id),
    hold_microcredits=FLAT_PRICE,
)
reverse = local_tools.model(
    "reverse", name="Reverse", description="Reverses the prompt.", hold_microcredits=reverse_hold
)
image = deepseek_images.model(
    "deepseek-image",
    name="DeepSeek Image",
    description="Async image generation.",
    default="image",
    bill=per_image,
    hold_microcredits=image_hold,
)

ai = AIService().use(chat).use(vision).use(flat).use(reverse).use(image)
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
    if prompt and "prompt" in ctx.input and ctx.pathway != "image":
        ctx.input["messages"] = [
            {"role": "system", "content": prompt},
            {"role": "user", "content": ctx.input.pop("prompt")},
        ]
