"""The declarative federation: what a federation YAML file may say, checked, and the Federation it builds.

Only OpenAI-compatible providers can be declared; custom upstreams stay in Python. A file may still name
Python hooks and bill functions by import path ("pkg.module:function").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from downcity.ai.federation import Federation
from downcity.ai.hooks import Hooks
from downcity.ai.openai_compatible import OpenAICompatibleProvider
from downcity.ai.pricing import PER_MILLION, Price
from downcity.ai.provider import BillFn, FallbackRule, MediaInfo, ModelConfig, media_type_matches
from downcity.ai.service import AIService
from downcity.quotas import Quota

Loc = tuple[str | int, ...]
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
IMPORT_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
URL_PATTERN = r"^https?://\S+$"
MEDIA_PATTERN = r"^[\w.+-]+/([\w.+-]+|\*)$|^\*$"
PATTERN_MEANINGS = {
    ID_PATTERN: "should be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    ENV_PATTERN: "should be an environment variable name such as OPENAI_API_KEY",
    IMPORT_PATTERN: "should be an import path 'package.module:function'",
    URL_PATTERN: "should be an http:// or https:// URL",
    MEDIA_PATTERN: "should be a media type or pattern such as image/png or image/*",
}
"""What each pattern means, for error messages (a regular expression helps no one fix a file)."""
Microcredits = StrictInt
ImportPath = Annotated[str, Field(pattern=IMPORT_PATTERN, description='"package.module:function"')]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HooksSpec(_Spec):
    """Python hooks by import path, run as the Python API's hooks are."""

    before: list[ImportPath] = Field(default_factory=list)
    after: list[ImportPath] = Field(default_factory=list)
    on_error: list[ImportPath] = Field(default_factory=list)

    def paths(self) -> list[tuple[str, int, str]]:
        """(kind, index, import path) of every hook."""
        kinds = {"before": self.before, "after": self.after, "on_error": self.on_error}
        return [(kind, index, path) for kind, paths in kinds.items() for index, path in enumerate(paths)]


class ProviderSpec(_Spec):
    """One OpenAI-compatible upstream."""

    id: str = Field(pattern=ID_PATTERN)
    base_url: str = Field(pattern=URL_PATTERN)
    env_key: str = Field(pattern=ENV_PATTERN, description="the variable holding the upstream API key")
    passthrough_model: str | None = Field(default=None, min_length=1)
    timeout_s: float = Field(default=60.0, gt=0)


class PriceSpec(_Spec):
    """A `Price` in integer microcredits: per million tokens of each class, per request and per image.

    `per_call`, `per_input_token` and `per_output_token` are the older spelling of `per_request` and of
    `input` / `output` per single token (x 1,000,000 per million).
    """

    input: Microcredits | None = Field(default=None, ge=0)
    cached_input: Microcredits | None = Field(default=None, ge=0)
    cache_write: Microcredits | None = Field(default=None, ge=0)
    output: Microcredits | None = Field(default=None, ge=0)
    reasoning: Microcredits | None = Field(default=None, ge=0)
    per_request: Microcredits | None = Field(default=None, ge=0)
    per_image: Microcredits | None = Field(default=None, ge=0)
    per_call: Microcredits | None = Field(default=None, ge=0)
    per_input_token: Microcredits | None = Field(default=None, ge=0)
    per_output_token: Microcredits | None = Field(default=None, ge=0)

    def price(self) -> Price:
        """The `Price` this declares."""
        per_token = PER_MILLION
        return Price(
            input=self.input if self.input is not None else (self.per_input_token or 0) * per_token,
            cached_input=self.cached_input,
            cache_write=self.cache_write,
            output=self.output if self.output is not None else (self.per_output_token or 0) * per_token,
            reasoning=self.reasoning,
            per_request=self.per_request if self.per_request is not None else self.per_call or 0,
            per_image=self.per_image or 0,
        )


class FallbackSpec(_Spec):
    """When a request carries a file of this media pattern the model cannot take, run `model` instead."""

    media: str = Field(pattern=MEDIA_PATTERN)
    model: str


class ModelSpec(_Spec):
    """One model of a declared provider."""

    id: str = Field(pattern=ID_PATTERN)
    provider: str
    name: str = ""
    description: str = ""
    upstream_model: str | None = Field(default=None, min_length=1)
    default: list[Literal["text", "stream", "openai"]] = Field(default_factory=list)
    media: list[str] = Field(default_factory=list)
    fallback: list[FallbackSpec] = Field(default_factory=list)
    price: PriceSpec | None = None
    max_output_tokens: StrictInt | None = Field(default=None, ge=1)
    bill: ImportPath | None = None
    hold_microcredits: Microcredits | None = Field(default=None, ge=0)
    hooks: HooksSpec = Field(default_factory=HooksSpec)


class FederationSpec(_Spec):
    """The whole file."""

    name: str = Field(min_length=1)
    providers: list[ProviderSpec] = Field(min_length=1)
    models: list[ModelSpec] = Field(min_length=1)
    hooks: HooksSpec = Field(default_factory=HooksSpec)
    quotas: list[Quota] = Field(default_factory=list)


@dataclass(frozen=True)
class Issue:
    """One problem in a file: where (a pydantic-style location) and what."""

    loc: Loc
    message: str


@dataclass(frozen=True)
class MediaMatch:
    """A fallback rule's match: the file's media type falls under `pattern`."""

    pattern: str

    def __call__(self, media: MediaInfo) -> bool:
        return media_type_matches(self.pattern, media.media_type)


def import_callable(path: str) -> Callable[..., Any]:
    """The callable named by "pkg.module:attribute"; ValueError saying why not."""
    module_name, _, attribute = path.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r}: {error}") from None
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(value):
        raise ValueError(f"{path!r} is a {type(value).__name__}, not a function")
    fn: Callable[..., Any] = value
    return fn


def check(spec: FederationSpec) -> list[Issue]:
    """Cross-field rules pydantic cannot see: ids, references, defaults, prices and holds."""
    issues: list[Issue] = []
    provider_ids = _duplicates([p.id for p in spec.providers], "providers", "provider", issues)
    model_ids = _duplicates([m.id for m in spec.models], "models", "model", issues)
    owners: dict[str, str] = {}
    for index, model in enumerate(spec.models):
        at: Loc = ("models", index)
        if model.provider not in provider_ids:
            issues.append(Issue((*at, "provider"), f"no provider {model.provider!r}; declared: {sorted(provider_ids)}"))
        for pathway in model.default:
            if pathway in owners:
                issues.append(Issue((*at, "default"), f"{owners[pathway]!r} is already the default for {pathway!r}"))
            owners.setdefault(pathway, model.id)
        for rule_index, rule in enumerate(model.fallback):
            if rule.model not in model_ids or rule.model == model.id:
                message = f"fallback target {rule.model!r} must be another declared model"
                issues.append(Issue((*at, "fallback", rule_index, "model"), message))
        issues += _check_price(model, at)
    return issues


def _duplicates(ids: list[str], section: str, kind: str, issues: list[Issue]) -> set[str]:
    seen: set[str] = set()
    for index, value in enumerate(ids):
        if value in seen:
            issues.append(Issue((section, index, "id"), f"{kind} id {value!r} is declared twice"))
        seen.add(value)
    return seen


_SPELLINGS = (("per_request", "per_call"), ("input", "per_input_token"), ("output", "per_output_token"))


def _check_price(model: ModelSpec, at: Loc) -> list[Issue]:
    price, hold = model.price, model.hold_microcredits
    if price is not None:
        for name, older in _SPELLINGS:
            if getattr(price, name) is not None and getattr(price, older) is not None:
                return [Issue((*at, "price", older), f"give {name} or {older}, not both")]
        if all(value is None for value in price.model_dump().values()):
            return [Issue((*at, "price"), "give at least one rate, e.g. input and output per million tokens")]
        per_request = price.price().per_request
        if hold is not None and hold < per_request:
            return [Issue((*at, "hold_microcredits"), f"the hold must cover the price of a call ({per_request})")]
    elif model.bill is not None and hold is None:
        message = "a billed model needs a hold (or a price) that bounds one call's cost"
        return [Issue((*at, "hold_microcredits"), message)]
    return []


class Builder:
    """Turns a checked spec into a Federation, collecting every import failure as an Issue."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def _import(self, path: str, loc: Loc) -> Callable[..., Any] | None:
        try:
            return import_callable(path)
        except ValueError as error:
            self.issues.append(Issue(loc, str(error)))
            return None

    def hooks(self, spec: HooksSpec, at: Loc) -> Hooks:
        """The hooks a HooksSpec names."""
        hooks = Hooks()
        for kind, index, path in spec.paths():
            fn = self._import(path, (*at, "hooks", kind, index))
            if fn is not None:
                getattr(hooks, kind).append(fn)
        return hooks

    def bill(self, model: ModelSpec, at: Loc) -> BillFn | None:
        """The model's bill function, by its import path, or none."""
        return self._import(model.bill, (*at, "bill")) if model.bill is not None else None

    def federation(self, spec: FederationSpec) -> Federation:
        """The Federation: one AIService holding every model."""
        providers = {
            p.id: OpenAICompatibleProvider(
                p.id,
                env=[p.env_key],
                env_key=p.env_key,
                base_url=p.base_url,
                passthrough_model=p.passthrough_model,
                timeout_s=p.timeout_s,
            )
            for p in spec.providers
        }
        ai = AIService()
        for index, model in enumerate(spec.models):
            at: Loc = ("models", index)
            config = ModelConfig(
                id=model.id,
                provider=providers[model.provider],
                name=model.name,
                description=model.description,
                default=tuple(model.default),
                media=tuple(model.media),
                fallback=tuple(FallbackRule(match=MediaMatch(r.media), model=r.model) for r in model.fallback),
                bill=self.bill(model, at),
                hold_microcredits=model.hold_microcredits,
                price=model.price.price() if model.price is not None else None,
                max_output_tokens=model.max_output_tokens,
                upstream_model=model.upstream_model or "",
                hooks=self.hooks(model.hooks, at),
            )
            ai.use(config)
        return Federation(name=spec.name, hooks=self.hooks(spec.hooks, ()), quotas=spec.quotas).use(ai)
