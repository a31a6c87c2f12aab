"""`Price`: a model's declared rates per token class, and the one charge rule that applies them.

Token rates are integer microcredits per million tokens; `per_request`, `per_image` and `per_second` are
integer microcredits per unit. The charge of one call is

    ceil( sum  units(class) x rate(class)  /  1,000,000 )      microcredits, rounded up once per call,

where each class's cost is first taken exactly, in picocredits (millionths of a microcredit: tokens x rate
per million is an integer), so no class loses a fraction to rounding and the call never rounds twice.

Token classes, from the upstream's normalised usage (`downcity.types.Usage`, whose `input_tokens` counts
every prompt token, cached and cache-written ones included, and whose `output_tokens` counts reasoning too):

- ``input``: prompt tokens neither read from nor written to a cache, at `input`;
- ``cached_input``: prompt tokens read from the cache (OpenAI ``prompt_tokens_details.cached_tokens``,
  Anthropic ``cache_read_input_tokens``), at `cached_input` (default: `input`);
- ``cache_write``: prompt tokens written to the cache (Anthropic ``cache_creation_input_tokens``), at
  `cache_write` (default: `input`);
- ``output``: completion tokens that are not reasoning, at `output`;
- ``reasoning``: reasoning tokens (``completion_tokens_details.reasoning_tokens``), at `reasoning`
  (default: `output`);
- ``request``, ``image``, ``second``: one per call, per generated image, per second of video.

An unset cache or reasoning rate falls back to the rate of the tokens it is part of, never to zero: a
forgotten rate bills at the full price instead of giving tokens away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from downcity.types import Usage

PER_MILLION = 1_000_000
PRICE_CLASSES: tuple[str, ...] = (
    "input",
    "cached_input",
    "cache_write",
    "output",
    "reasoning",
    "request",
    "image",
    "second",
)
"""The token and unit classes a `Price` charges, in the order usage records and summaries list them."""


def _rate(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Price.{name} must be a non-negative integer of microcredits")


@dataclass(frozen=True, kw_only=True)
class Price:
    """A model's public price, in integer microcredits: per million tokens of each class, per request,
    per image and per second. See the module docstring for the charge rule."""

    input: int = 0
    cached_input: int | None = None
    cache_write: int | None = None
    output: int = 0
    reasoning: int | None = None
    per_request: int = 0
    per_image: int = 0
    per_second: int = 0

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None or spec.name not in ("cached_input", "cache_write", "reasoning"):
                _rate(value, spec.name)

    @property
    def rates(self) -> dict[str, int]:
        """Every class's rate: picocredits per unit (microcredits per million tokens, or per unit x 10^6)."""
        return {
            "input": self.input,
            "cached_input": self.input if self.cached_input is None else self.cached_input,
            "cache_write": self.input if self.cache_write is None else self.cache_write,
            "output": self.output,
            "reasoning": self.output if self.reasoning is None else self.reasoning,
            "request": self.per_request * PER_MILLION,
            "image": self.per_image * PER_MILLION,
            "second": self.per_second * PER_MILLION,
        }

    @property
    def free(self) -> bool:
        """Whether every rate is zero: such a model charges nothing and needs no hold."""
        return not any(self.rates.values())

    def to_public(self) -> dict[str, int]:
        """The price as `/v1/ai/models` shows it, every fallback rate resolved."""
        rates = self.rates
        per_unit = {"request": "per_request", "image": "per_image", "second": "per_second"}
        return {
            per_unit.get(name, name): rate // PER_MILLION if name in per_unit else rate for name, rate in rates.items()
        }

    def classes(self, usage: Usage, images: int = 0) -> dict[str, int]:
        """Each class's exact cost in picocredits for one call's usage (`images` when usage has none)."""
        units = usage_units(usage, images)
        rates = self.rates
        return {name: units[name] * rates[name] for name in PRICE_CLASSES}

    def charge(self, usage: Usage, images: int = 0) -> int:
        """The call's charge in microcredits: the classes' exact sum, rounded up once."""
        return round_up(sum(self.classes(usage, images).values()))


def usage_units(usage: Usage, images: int = 0) -> dict[str, int]:
    """How many units of each class a call used; overlapping counts are split so nothing is billed twice."""
    cached = min(usage.cached_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - cached)
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    return {
        "input": usage.input_tokens - cached - written,
        "cached_input": cached,
        "cache_write": written,
        "output": usage.output_tokens - reasoning,
        "reasoning": reasoning,
        "request": 1,
        "image": usage.images or images,
        "second": usage.seconds,
    }


def round_up(picocredits: int) -> int:
    """Picocredits to microcredits, rounded up (the one rounding of a call)."""
    return -(-picocredits // PER_MILLION)


def price_from(value: Price | Mapping[str, Any] | None) -> Price | None:
    """A `Price` from a Price, a dict of its fields, or None."""
    if value is None or isinstance(value, Price):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {spec.name for spec in fields(Price)}
        if unknown:
            raise ValueError(f"unknown Price fields: {sorted(unknown)}")
        return Price(**value)
    raise ValueError(f"a price is a Price or a dict of its fields, not {type(value).__name__}")
