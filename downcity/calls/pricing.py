"""A priced model's hold, derived from the request, and its charge, from the upstream's usage.

The hold is the most the call may cost under its `Price`:

- prompt tokens counted offline (`count_prompt_tokens`, OpenAI's tokenizers), with `PROMPT_HEADROOM` for
  families whose tokenizer differs, at the dearest prompt rate (input, cache read, cache write);
- plus the output budget, `max_tokens` (or `max_completion_tokens`) capped by the model's
  `max_output_tokens`, at the dearer of the output and reasoning rates;
- plus `per_request`, `per_image` x the images asked for (`count` or `n`), `per_second` x `duration_s`.

A request whose output budget cannot be bounded (a token rate, no `max_tokens` and no declared output cap;
a per-second rate and no `duration_s`) is refused with 422 naming the field, before any work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from downcity.ai.context import Context
from downcity.ai.pricing import Price, round_up
from downcity.ai.provider import ModelConfig
from downcity.calls.metering import count_prompt_tokens
from downcity.errors import invalid
from downcity.types import MAX_IMAGE_COUNT, ChargeDraft, UIMessage

# Offline counts are exact for OpenAI models and within about ±20% for others (see `metering.ESTIMATE_NOTE`).
PROMPT_HEADROOM = (5, 4)


@dataclass(frozen=True)
class Estimate:
    """What a request may use at most: prompt and output tokens, images and seconds."""

    prompt_tokens: int
    output_tokens: int
    images: int = 1
    seconds: int = 0

    @property
    def tokens(self) -> int:
        """Prompt plus output tokens: what a tokens-per-minute quota reserves."""
        return self.prompt_tokens + self.output_tokens


def output_budget(model: ModelConfig, input: Mapping[str, Any]) -> int | None:
    """The most output tokens the call may produce: `max_tokens` capped by the model's cap; None if unbounded."""
    asked = next(
        (v for k in ("max_tokens", "max_completion_tokens") if isinstance(v := input.get(k), int) and v > 0), None
    )
    cap = model.max_output_tokens
    if asked is None:
        return cap
    return asked if cap is None else min(asked, cap)


def estimate(model: ModelConfig, input: Mapping[str, Any]) -> Estimate:
    """The request's bound on each unit; output tokens are 0 when nothing bounds them."""
    headroom, base = PROMPT_HEADROOM
    counted = count_prompt_tokens(input, model.upstream_model)
    images = next((v for k in ("count", "n") if isinstance(v := input.get(k), int) and not isinstance(v, bool)), 1)
    seconds = input.get("duration_s")
    return Estimate(
        prompt_tokens=-(-counted * headroom // base),
        output_tokens=output_budget(model, input) or 0,
        images=min(max(images, 1), MAX_IMAGE_COUNT),
        seconds=seconds if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0 else 0,
    )


def derived_hold(model: ModelConfig, price: Price, input: Mapping[str, Any]) -> int:
    """The most a call with this body may cost under `price`; 422 when the body leaves it unbounded."""
    rates = price.rates
    if (rates["output"] or rates["reasoning"]) and output_budget(model, input) is None:
        raise invalid(
            f"model '{model.id}' is priced per output token and declares no max_output_tokens: give max_tokens",
            "max_tokens",
        )
    bound = estimate(model, input)
    if price.per_second and not bound.seconds:
        raise invalid(f"model '{model.id}' is priced per second: give duration_s", "duration_s")
    prompt_rate = max(rates["input"], rates["cached_input"], rates["cache_write"])
    output_rate = max(rates["output"], rates["reasoning"])
    tokens = bound.prompt_tokens * prompt_rate + bound.output_tokens * output_rate
    units = price.per_request + price.per_image * bound.images + price.per_second * bound.seconds
    return round_up(tokens) + units


def hold_of(model: ModelConfig, input: Mapping[str, Any]) -> int:
    """A billable model's hold: the operator's `hold_microcredits` when set, else derived from its price."""
    price = model.effective_price
    if model.holds_by_hand or price is None:
        return model.hold_for(input)
    return derived_hold(model, price, input)


@dataclass(frozen=True)
class PricedCharge:
    """A call's resolved charge (None: free) and, when its price drafted it, each class's cost in picocredits."""

    draft: ChargeDraft | None
    classes: dict[str, int] = field(default_factory=dict)


def price_charge(model: ModelConfig, ctx: Context, output: Any) -> PricedCharge | None:
    """The charge of the model's price for the call's metered usage; None for an unpriced model."""
    price = model.effective_price
    if price is None:
        return None
    images = sum(1 for part in output.parts if part.type == "file") if isinstance(output, UIMessage) else 0
    classes = price.classes(ctx.metering.usage, images)
    amount = round_up(sum(classes.values()))
    note = f"{model.id}: {amount} microcredits at its price"
    metadata = {"picocredits": {name: cost for name, cost in classes.items() if cost}}
    draft = ChargeDraft(amount_microcredits=amount, ref=ctx.request_id, note=note, metadata=metadata)
    return PricedCharge(draft, classes)
