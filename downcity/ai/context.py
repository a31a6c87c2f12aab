"""The per-request context that hooks and provider actions read and write."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field

from downcity.errors import DowncityHTTPError
from downcity.types import ChargeDraft, Usage


class ProviderView(Protocol):
    """What a context exposes of its provider."""

    @property
    def id(self) -> str: ...


class ModelView(Protocol):
    """What hooks and actions read of `ctx.model`; every registered `ModelConfig` is one.

    A Protocol rather than `ModelConfig` itself keeps the contract acyclic: `ModelConfig` and `Provider`
    take a `Context` in their callbacks, so the context may not import them back.
    """

    @property
    def id(self) -> str: ...

    @property
    def upstream_model(self) -> str: ...

    @property
    def provider(self) -> ProviderView: ...


class UserInfo(BaseModel):
    """The caller, as carried by their user token."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class CityInfo(BaseModel):
    """The product boundary the call is made in."""

    model_config = ConfigDict(frozen=True)

    city_id: str
    name: str = ""
    status: Literal["active", "paused"] = "active"


class EnvReader(Protocol):
    """Where provider secrets come from; `get` returns None for an unset key."""

    def get(self, key: str) -> str | None: ...


def coerce_charge(value: ChargeDraft | dict[str, Any] | None) -> ChargeDraft | None:
    """A charge draft from a draft, a plain dict or None."""
    if value is None or isinstance(value, ChargeDraft):
        return value
    if isinstance(value, dict):
        return ChargeDraft.model_validate(value)
    raise TypeError(f"a charge must be a ChargeDraft, a dict or None, not {type(value).__name__}")


@dataclass
class Metering:
    """Usage, charge and time-to-first-byte gathered while an action runs."""

    usage: Usage = field(default_factory=Usage)
    charge: ChargeDraft | None = None
    ttfb_ms: int | None = None
    started_at: float = field(default_factory=time.perf_counter)

    def add_usage(self, usage: Usage) -> None:
        """Add one upstream call's usage to the running total."""
        self.usage = Usage(**{name: getattr(self.usage, name) + getattr(usage, name) for name in Usage.model_fields})

    def set_usage(self, usage: Usage) -> None:
        """Replace the total, for upstreams that report cumulative usage."""
        self.usage = usage

    def set_charge(self, charge: ChargeDraft | dict[str, Any] | None) -> None:
        """Record the action's own charge draft."""
        self.charge = coerce_charge(charge)

    def mark_first_byte(self) -> None:
        """Record the time to the first upstream byte; later calls keep the first value."""
        if self.ttfb_ms is None:
            self.ttfb_ms = int((time.perf_counter() - self.started_at) * 1000)


class Context:
    """One request as hooks and provider actions see it.

    `input` is the request body (before-hooks may rewrite it); `locals` is scratch space shared by the
    hooks and the action of one request. `output`, `error` and `duration_ms` are filled in for after and
    on_error hooks. `provider` is always the model's provider; passing it is optional.
    """

    def __init__(
        self,
        *,
        input: dict[str, Any],
        user: UserInfo,
        city: CityInfo,
        model: ModelView,
        pathway: str,
        request_id: str,
        provider: ProviderView | None = None,
        locals: dict[str, Any] | None = None,
        metering: Metering | None = None,
        job: dict[str, Any] | None = None,
        env_reader: EnvReader | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if provider is not None and provider.id != model.provider.id:
            raise ValueError(f"model '{model.id}' is served by '{model.provider.id}', not '{provider.id}'")
        self.input = input
        self.user = user
        self.city = city
        self.model = model
        self.pathway = pathway
        self.request_id = request_id
        self.locals: dict[str, Any] = locals if locals is not None else {}
        self.metering = metering if metering is not None else Metering()
        self.job = job
        self.env_reader = env_reader
        self.http_client = http_client
        self.output: Any = None
        self.error: BaseException | None = None
        self.duration_ms: int | None = None
        # The key variable this attempt uses, picked from the provider's key pool by the provider deployment.
        self.key_name: str | None = None

    def __repr__(self) -> str:
        return f"Context(request_id={self.request_id!r}, pathway={self.pathway!r}, model={self.model.id!r})"

    @property
    def provider(self) -> ProviderView:
        """The provider that serves `model`."""
        return self.model.provider

    @property
    def variant(self) -> ModelView:
        """Alias of `model`."""
        return self.model

    @property
    def http(self) -> httpx.AsyncClient:
        """The provider's pooled HTTP client."""
        if self.http_client is None:
            raise RuntimeError("this context has no HTTP client: only provider actions get one")
        return self.http_client

    def api_key(self) -> str:
        """The upstream API key of this attempt: the pool's pick (`key_name`); 503 when none is set."""
        if self.key_name is None:
            raise DowncityHTTPError(
                503, "provider_not_configured", f"provider '{self.provider.id}' has no API key variable"
            )
        return self.env(self.key_name)

    def env(self, key: str) -> str:
        """The value of a provider environment variable; 503 naming the key when it is unset."""
        value = self.env_reader.get(key) if self.env_reader is not None else None
        if not value:
            raise DowncityHTTPError(
                503,
                "provider_not_configured",
                f"provider '{self.provider.id}' is not configured: {key} is not set",
            )
        return value
