"""`AIService`: a named group of models with its own hooks, mounted on a Federation."""

from __future__ import annotations

from downcity.ai.hooks import HookHost, Hooks
from downcity.ai.provider import ModelConfig


class AIService(HookHost):
    """Registers models; `federation.use(service)` mounts them."""

    def __init__(self, id: str = "ai", *, hooks: Hooks | None = None) -> None:
        self.id = id
        self.hooks = hooks if hooks is not None else Hooks()
        self._models: dict[str, ModelConfig] = {}

    def __repr__(self) -> str:
        return f"AIService(id={self.id!r}, models={list(self._models)})"

    @property
    def models(self) -> dict[str, ModelConfig]:
        """The registered models by id, in registration order."""
        return dict(self._models)

    def use(self, model: ModelConfig) -> AIService:
        """Register a model; a duplicate id or a second default for a pathway is a ValueError."""
        if not isinstance(model, ModelConfig):
            raise ValueError(f"AIService.use takes a ModelConfig, not {type(model).__name__}")
        if model.id in self._models:
            raise ValueError(f"model '{model.id}' is already registered in service '{self.id}'")
        check_defaults([*self._models.values(), model])
        self._models[model.id] = model
        return self


def check_defaults(models: list[ModelConfig]) -> None:
    """Raise ValueError when two models claim the default of the same pathway."""
    owners: dict[str, str] = {}
    for model in models:
        for pathway in model.default:
            if pathway in owners:
                raise ValueError(f"models '{owners[pathway]}' and '{model.id}' are both the default for '{pathway}'")
            owners[pathway] = model.id
