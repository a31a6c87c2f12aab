"""`ModelConfig`: one model id in the catalog, its provider, defaults, fallback rules and billing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from downcity.hooks import HookHost, Hooks
from downcity.types import ChargeDraft

if TYPE_CHECKING:
    from downcity.context import Context
    from downcity.provider import Provider

PATHWAYS: tuple[str, ...] = ("text", "stream", "image", "openai", "video")

BillFn = Callable[["Context", Any], ChargeDraft | dict[str, Any] | None]


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
    """When `match` is true for a file the model cannot handle, run `model` (a config or a model id)."""

    match: Callable[[MediaInfo], bool]
    model: ModelConfig | str

    @classmethod
    def coerce(cls, rule: FallbackRule | Mapping[str, Any]) -> FallbackRule:
        """A rule from a `FallbackRule` or the ``{"match": fn, "model": other}`` dict form."""
        if isinstance(rule, FallbackRule):
            return rule
        if not isinstance(rule, Mapping) or set(rule) != {"match", "model"}:
            raise ValueError("a fallback rule is a FallbackRule or a dict with exactly 'match' and 'model'")
        match, model = rule["match"], rule["model"]
        if not callable(match):
            raise ValueError("a fallback rule's 'match' must be callable")
        if not isinstance(model, ModelConfig | str):
            raise ValueError("a fallback rule's 'model' must be a ModelConfig or a model id")
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
    hold_microcredits: int | None = None
    upstream_model: str = ""
    media: tuple[str, ...] = ()
    hooks: Hooks = field(default_factory=Hooks)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("a model id must be a non-empty string")
        # Frozen: normalise the convenience defaults once, at construction.
        object.__setattr__(self, "name", self.name or self.id)
        object.__setattr__(self, "upstream_model", self.upstream_model or self.id)
        object.__setattr__(self, "default", tuple(self.default))
        object.__setattr__(self, "media", tuple(self.media))
        object.__setattr__(self, "fallback", tuple(FallbackRule.coerce(r) for r in self.fallback))
        missing = [p for p in self.default if p not in self.pathways]
        if missing:
            raise ValueError(f"model '{self.id}' cannot be the default for {missing}: it serves {list(self.pathways)}")
        hold = self.hold_microcredits
        if hold is not None and (isinstance(hold, bool) or not isinstance(hold, int) or hold < 0):
            raise ValueError(f"model '{self.id}': hold_microcredits must be a non-negative integer")

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
        }
