"""The provider contract: `Provider` (one upstream) and `ModelConfig` (one model it serves), with fallback rules."""

from __future__ import annotations

import re
from abc import ABC
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from downcity.ai.hooks import HookHost, Hooks
from downcity.ai.pricing import Price, price_from
from downcity.ai.resilience import NO_RETRY, Breaker, ErrorMatch, Retry, Timeouts, error_match
from downcity.errors import DowncityHTTPError
from downcity.types import ActionResult, ChargeDraft, ImageJobResult, UIMessage

if TYPE_CHECKING:
    from downcity.ai.context import Context
    from downcity.ai.openai_client import OpenAICompatibleClient

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TEXT_PART_TYPES = frozenset({"text", "input_text"})

PATHWAYS: tuple[str, ...] = ("text", "stream", "image", "openai", "video")

BillFn = Callable[["Context", Any], ChargeDraft | dict[str, Any] | None]
# The hold of one call from its request body, for models whose cost grows with the request (a price per image, say).
HoldFn = Callable[[Mapping[str, Any]], int]


@dataclass(frozen=True)
class MediaInfo:
    """One file a request carries: its media type (e.g. ``image/png`` or ``image/*``) and URL."""

    media_type: str
    url: str | None = None


def media_type_matches(pattern: str, media_type: str) -> bool:
    """Whether a media pattern such as ``image/*`` covers a media type (wildcards on either side)."""
    if pattern in ("*", "*/*") or pattern == media_type:
        return True
    pattern_top, _, pattern_sub = pattern.partition("/")
    type_top, _, type_sub = media_type.partition("/")
    return pattern_top == type_top and "*" in (pattern_sub, type_sub)


@dataclass(frozen=True)
class FallbackRule:
    """Run `model` (a config or a model id) instead, when `match` holds.

    ``on="media"`` (the default): `match` takes each file the model cannot handle. ``on="error"``: `match` takes
    the `Failure` of the model's upstream call (after its retries, before the first byte reached the client).
    """

    match: Callable[[MediaInfo], bool] | ErrorMatch
    model: ModelConfig | str
    on: str = "media"

    @classmethod
    def coerce(cls, rule: FallbackRule | Mapping[str, Any]) -> FallbackRule:
        """A rule from a `FallbackRule`, ``{"match": fn, "model": other}`` or ``{"on": "error", ...}``."""
        if isinstance(rule, FallbackRule):
            return rule
        if not isinstance(rule, Mapping) or "model" not in rule or not set(rule) <= {"on", "match", "model"}:
            raise ValueError(
                "a fallback rule is a FallbackRule or a dict of exactly 'match' and 'model', and optionally 'on'"
            )
        on, model = rule.get("on", "media"), rule["model"]
        if on == "media" and "match" not in rule:
            raise ValueError("a fallback rule is a FallbackRule or a dict of exactly 'match' and 'model'")
        if on not in ("media", "error"):
            raise ValueError("a fallback rule's 'on' is 'media' or 'error'")
        if not isinstance(model, ModelConfig | str):
            raise ValueError("a fallback rule's 'model' must be a ModelConfig or a model id")
        if on == "error":
            return cls(match=error_match(rule.get("match")), model=model, on="error")
        match = rule.get("match")
        if not callable(match):
            raise ValueError("a fallback rule's 'match' must be callable")
        return cls(match=match, model=model)

    @property
    def model_id(self) -> str:
        """The id of the target model."""
        return self.model if isinstance(self.model, str) else self.model.id


@dataclass(frozen=True, eq=False, kw_only=True)
class ModelConfig(HookHost):
    """A model registered in the Federation; products see only `to_public()`."""

    id: str
    provider: Provider
    name: str = ""
    description: str = ""
    default: tuple[str, ...] = ()
    fallback: tuple[FallbackRule, ...] = ()
    bill: BillFn | None = None
    hold_microcredits: int | HoldFn | None = None
    upstream_model: str = ""
    media: tuple[str, ...] = ()
    hooks: Hooks = field(default_factory=Hooks)
    retry: Retry | None = None
    timeouts: Timeouts | None = None
    price: Price | None = None
    max_output_tokens: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("a model id must be a non-empty string")
        # Frozen: normalise the convenience defaults once, at construction.
        object.__setattr__(self, "name", self.name or self.id)
        object.__setattr__(self, "upstream_model", self.upstream_model or self.id)
        object.__setattr__(self, "default", tuple(self.default))
        object.__setattr__(self, "media", tuple(self.media))
        object.__setattr__(self, "fallback", tuple(FallbackRule.coerce(r) for r in self.fallback))
        object.__setattr__(self, "price", price_from(self.price))
        cap = self.max_output_tokens
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"model '{self.id}': max_output_tokens must be a positive integer")
        missing = [p for p in self.default if p not in self.pathways]
        if missing:
            raise ValueError(f"model '{self.id}' cannot be the default for {missing}: it serves {list(self.pathways)}")
        hold = self.hold_microcredits
        if (
            hold is not None
            and not callable(hold)
            and (isinstance(hold, bool) or not isinstance(hold, int) or hold < 0)
        ):
            raise ValueError(f"model '{self.id}': hold_microcredits must be a non-negative integer or a function")
        if (self.bill is not None or self.provider.has_bill) and not hold and self.effective_price is None:
            raise ValueError(
                f"model '{self.id}' is billable but declares no hold_microcredits: set the most one call may cost, "
                "or a Price to derive it from, so every call is admitted inside a hold"
            )

    @property
    def retry_policy(self) -> Retry:
        """The model's retry rule, else its provider's, else a single attempt."""
        return self.retry or self.provider.retry or NO_RETRY

    @property
    def timeout_policy(self) -> Timeouts:
        """The model's timeouts over its provider's."""
        return (self.timeouts or Timeouts()).over(self.provider.timeouts)

    @property
    def effective_price(self) -> Price | None:
        """The model's price, else its provider's default price; None when neither charges anything."""
        price = self.price if self.price is not None else self.provider.price
        return price if price is not None and not price.free else None

    @property
    def billable(self) -> bool:
        """Whether calls are admitted inside a hold and may be charged: the model declares a hold or a price."""
        return callable(self.hold_microcredits) or bool(self.hold_microcredits) or self.effective_price is not None

    @property
    def holds_by_hand(self) -> bool:
        """Whether the hold is the operator's (`hold_microcredits`) rather than derived from the price."""
        return callable(self.hold_microcredits) or bool(self.hold_microcredits)

    def hold_for(self, input: Mapping[str, Any]) -> int:
        """The most a call with this request body may cost: the declared hold, or the hold function's answer."""
        hold = self.hold_microcredits
        amount = hold(input) if callable(hold) else hold or 0
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise DowncityHTTPError(
                502, "provider_error", f"model '{self.id}': its hold function must return a non-negative integer"
            )
        return amount

    @property
    def pathways(self) -> tuple[str, ...]:
        """The pathways this model serves, derived from its provider's capabilities."""
        capabilities = self.provider.capabilities
        return tuple(p for p in PATHWAYS if p in capabilities)

    def accepts(self, media_type: str) -> bool:
        """Whether the model takes this media type natively."""
        return any(media_type_matches(pattern, media_type) for pattern in self.media)

    def to_public(self) -> dict[str, Any]:
        """What products may see: never base URLs, upstream model ids or keys."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "provider": self.provider.id,
            "pathways": list(self.pathways),
            "default_for": list(self.default),
            "media": list(self.media),
            "price": price.to_public() if (price := self.effective_price) is not None else None,
            "max_output_tokens": self.max_output_tokens,
        }


class Provider(ABC):  # noqa: B024 - every action is optional; capabilities come from what a subclass defines
    """One upstream. Subclasses define the actions they support; see `capabilities`.

    - `create_client(api_key, base_url)` gives default `text` and `stream` actions (OpenAI-compatible API);
    - `text(ctx)` / `stream(ctx)` replace them for custom upstreams;
    - `openai(ctx)` handles `/chat/completions`; without it, a provider with `base_url` and `env_key` gets
      auto passthrough;
    - `image_create(ctx)` and `image_fetch(ctx)` together give the `image` capability;
    - `video(ctx)`; `bill(ctx, output)` drafts a provider-level charge.
    """

    def __init__(
        self,
        id: str,
        *,
        env: Sequence[str] = (),
        env_key: str | Sequence[str] | None = None,
        base_url: str | None = None,
        passthrough_model: str | None = None,
        timeout_s: float = 60.0,
        retry: Retry | None = None,
        timeouts: Timeouts | None = None,
        breaker: Breaker | None = None,
        key_rest_s: float = 60.0,
        price: Price | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(id, str) or not _ID_PATTERN.match(id):
            raise ValueError(f"provider id {id!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if timeout_s <= 0:
            raise ValueError(f"provider '{id}': timeout_s must be positive")
        if key_rest_s <= 0:
            raise ValueError(f"provider '{id}': key_rest_s must be positive")
        self.id = id
        self.env: tuple[str, ...] = (env,) if isinstance(env, str) else tuple(env)
        # Several keys make a pool: calls spread across them and a refused or rate-limited key rests.
        self.env_keys: tuple[str, ...] = (env_key,) if isinstance(env_key, str) else tuple(env_key or ())
        if len(set(self.env_keys)) != len(self.env_keys) or not all(self.env_keys):
            raise ValueError(f"provider '{id}': env_key names each key variable once")
        self.env_key = self.env_keys[0] if self.env_keys else None
        self.base_url = base_url
        self.passthrough_model = passthrough_model
        self.timeout_s = timeout_s
        self.retry = retry
        self.timeouts = (timeouts or Timeouts()).over(Timeouts(connect_s=min(10.0, timeout_s)))
        self.breaker = breaker
        self.key_rest_s = key_rest_s
        # The default price of every model of this provider that declares none of its own.
        self.price = price_from(price)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    def defines(self, name: str) -> bool:
        """Whether the subclass overrides the optional method `name`."""
        return getattr(type(self), name, None) is not getattr(Provider, name)

    @property
    def has_bill(self) -> bool:
        """Whether the subclass defines a provider-level `bill`."""
        return self.defines("bill")

    @property
    def auto_passthrough(self) -> bool:
        """Whether `/chat/completions` is forwarded as-is: no `openai` method, base_url and env_key set."""
        return not self.defines("openai") and bool(self.base_url) and bool(self.env_key)

    @property
    def capabilities(self) -> frozenset[str]:
        """Which of "text", "stream", "openai", "image" and "video" this provider supports."""
        has_client = self.defines("create_client")
        found = set()
        if has_client or self.defines("text"):
            found.add("text")
        if has_client or self.defines("stream"):
            found.add("stream")
        if self.defines("openai") or self.auto_passthrough:
            found.add("openai")
        if self.defines("image_create") and self.defines("image_fetch"):
            found.add("image")
        if self.defines("video"):
            found.add("video")
        return frozenset(found)

    def model(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str = "",
        default: Sequence[str] | str = (),
        fallback: Sequence[FallbackRule | Mapping[str, Any]] = (),
        bill: BillFn | None = None,
        hold_microcredits: int | HoldFn | None = None,
        upstream_model: str | None = None,
        media: Sequence[str] | str = (),
        hooks: Hooks | None = None,
        retry: Retry | None = None,
        timeouts: Timeouts | None = None,
        price: Price | Mapping[str, Any] | None = None,
        max_output_tokens: int | None = None,
    ) -> ModelConfig:
        """A model served by this provider; `default` lists the pathways it is the default model for."""
        return ModelConfig(
            id=id,
            provider=self,
            name=name or id,
            description=description,
            default=(default,) if isinstance(default, str) else tuple(default),
            fallback=tuple(FallbackRule.coerce(rule) for rule in fallback),
            bill=bill,
            hold_microcredits=hold_microcredits,
            upstream_model=upstream_model or id,
            media=(media,) if isinstance(media, str) else tuple(media),
            hooks=hooks if hooks is not None else Hooks(),
            retry=retry,
            timeouts=timeouts,
            price=price_from(price),
            max_output_tokens=max_output_tokens,
        )

    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        """An OpenAI-compatible client; defining it gives default `text` and `stream` actions."""
        raise NotImplementedError(f"provider '{self.id}' does not define create_client")

    async def text(self, ctx: Context) -> ActionResult | UIMessage | dict[str, Any]:
        """A custom text action: an ActionResult, a UIMessage or ``{"output": ..., "charge": ...}``."""
        raise NotImplementedError(f"provider '{self.id}' does not define text")

    def stream(self, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """A custom stream action yielding UI message stream chunks; report usage via `ctx.metering`."""
        raise NotImplementedError(f"provider '{self.id}' does not define stream")

    async def openai(self, ctx: Context) -> dict[str, Any] | AsyncIterator[bytes]:
        """A custom `/chat/completions` handler: a response body, or SSE bytes when `stream` is true."""
        raise NotImplementedError(f"provider '{self.id}' does not define openai")

    async def image_create(self, ctx: Context) -> ImageJobResult:
        """Start an upstream image job."""
        raise NotImplementedError(f"provider '{self.id}' does not define image_create")

    async def image_fetch(self, ctx: Context) -> ImageJobResult:
        """Poll the upstream for the job in `ctx.job`."""
        raise NotImplementedError(f"provider '{self.id}' does not define image_fetch")

    async def video(self, ctx: Context) -> dict[str, Any]:
        """A custom video action."""
        raise NotImplementedError(f"provider '{self.id}' does not define video")

    def bill(self, ctx: Context, output: Any) -> ChargeDraft | dict[str, Any] | None:
        """The provider-level charge for a successful call; None means no charge."""
        return None

    def extract_prompt(self, input: Mapping[str, Any] | Sequence[Any] | str) -> str:
        """Flatten a prompt, UIMessages or OpenAI messages to plain text, one message per line."""
        return "\n".join(_texts_of(input))


def _texts_of(value: Any) -> list[str]:
    if isinstance(value, BaseModel):
        return _texts_of(value.model_dump(by_alias=True))
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, Mapping):
        if "prompt" in value or "messages" in value:
            return _texts_of(value.get("messages")) + _texts_of(value.get("prompt"))
        return _message_texts(value)
    if isinstance(value, Sequence):
        return [text for item in value for text in _texts_of(item)]
    return []


def _message_texts(message: Mapping[str, Any]) -> list[str]:
    parts = message.get("parts", message.get("content"))
    if isinstance(parts, str):
        return [parts] if parts else []
    if not isinstance(parts, list):
        return []
    texts = [part.get("text") for part in parts if isinstance(part, Mapping) and part.get("type") in _TEXT_PART_TYPES]
    joined = "\n".join(text for text in texts if isinstance(text, str) and text)
    return [joined] if joined else []
