"""`Federation`: the model catalog of every mounted AIService, its providers and its hooks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from downcity.accounts import AccountSpaces
from downcity.ai.hooks import HookHost, Hooks
from downcity.ai.provider import ModelConfig, Provider
from downcity.ai.service import AIService, check_defaults
from downcity.errors import DowncityHTTPError
from downcity.quotas import Quota


class Federation(HookHost):
    """One Federation serves the AI call layer of many products."""

    def __init__(
        self,
        name: str = "downcity",
        *,
        hooks: Hooks | None = None,
        shared_accounts: Mapping[str, Sequence[str]] | None = None,
        quotas: Sequence[Quota | Mapping[str, Any]] = (),
    ) -> None:
        self.name = name
        # Declared quotas bind every replica from the start; cities add their own through /v1/quotas/set.
        self.quotas = _check_quotas(quotas)
        self.hooks = hooks if hooks is not None else Hooks()
        # Each city's users have their own accounts unless named cities share a space (see downcity.accounts).
        self.accounts = AccountSpaces(shared_accounts)
        self._services: list[AIService] = []

    def __repr__(self) -> str:
        return f"Federation(name={self.name!r}, services={[s.id for s in self._services]})"

    @property
    def services(self) -> list[AIService]:
        """The mounted services, in mount order."""
        return list(self._services)

    def use(self, ai: AIService) -> Federation:
        """Mount a service; clashing service ids, model ids, provider ids or defaults are a ValueError."""
        if not isinstance(ai, AIService):
            raise ValueError(f"Federation.use takes an AIService, not {type(ai).__name__}")
        if any(service.id == ai.id for service in self._services):
            raise ValueError(f"service '{ai.id}' is already mounted")
        _check_catalog([*self._services, ai])
        self._services.append(ai)
        return self

    @property
    def models(self) -> dict[str, ModelConfig]:
        """Every model of every mounted service, by id."""
        return {model.id: model for service in self._services for model in service.models.values()}

    @property
    def providers(self) -> dict[str, Provider]:
        """Every provider serving a mounted model, by id."""
        return {model.provider.id: model.provider for model in self.models.values()}

    def model(self, id: str) -> ModelConfig:
        """The model with this id; 422 `unknown_model` otherwise."""
        found = self.models.get(id)
        if found is None:
            raise DowncityHTTPError(422, "unknown_model", f"unknown model '{id}'", "model")
        return found

    def default_model(self, pathway: str) -> ModelConfig | None:
        """The model registered as the default for `pathway`, if any."""
        return next((m for m in self.models.values() if pathway in m.default), None)

    def hook_chain(self, model: ModelConfig) -> list[Hooks]:
        """The hook levels around a call to `model`, outermost first: federation, service, model."""
        for service in self._services:
            if service.models.get(model.id) is model:
                return [self.hooks, service.hooks, model.hooks]
        raise ValueError(f"model '{model.id}' is not mounted in federation '{self.name}'")


def _check_quotas(quotas: Sequence[Quota | Mapping[str, Any]]) -> tuple[Quota, ...]:
    checked = tuple(quota if isinstance(quota, Quota) else Quota.model_validate(quota) for quota in quotas)
    ids = [quota.id for quota in checked]
    clashes = sorted({quota_id for quota_id in ids if ids.count(quota_id) > 1})
    if clashes:
        raise ValueError(f"quota ids must be unique in a federation: {clashes}")
    return checked


def _check_catalog(services: list[AIService]) -> None:
    seen_models: dict[str, str] = {}
    seen_providers: dict[str, Provider] = {}
    for service in services:
        for model in service.models.values():
            if model.id in seen_models:
                raise ValueError(
                    f"model '{model.id}' is registered in both '{seen_models[model.id]}' and '{service.id}'"
                )
            seen_models[model.id] = service.id
            known = seen_providers.setdefault(model.provider.id, model.provider)
            if known is not model.provider:
                raise ValueError(f"two different providers share the id '{model.provider.id}'")
    check_defaults([model for service in services for model in service.models.values()])
