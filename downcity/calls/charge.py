"""Which charge a successful call carries: action, then model bill, then provider bill, then none."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from downcity.ai.context import Context, coerce_charge
from downcity.ai.provider import ModelConfig, Provider
from downcity.errors import DowncityHTTPError
from downcity.types import ChargeDraft


def resolve_charge(
    action_charge: ChargeDraft | None,
    model: ModelConfig,
    provider: Provider,
    ctx: Context,
    output: Any,
) -> ChargeDraft | None:
    """The first charge drafted by (1) the action, (2) the model's `bill`, (3) the provider's `bill`.

    A `bill` returning None defers to the next level; return a zero charge to make a call free.
    """
    if action_charge is not None:
        return action_charge
    if model.bill is not None:
        charge = _drafted(model.bill(ctx, output), f"model '{model.id}'")
        if charge is not None:
            return charge
    return _drafted(provider.bill(ctx, output), f"provider '{provider.id}'")


def _drafted(value: Any, owner: str) -> ChargeDraft | None:
    try:
        return coerce_charge(value)
    except (TypeError, ValidationError):
        raise DowncityHTTPError(502, "provider_error", f"the bill of {owner} returned an invalid charge") from None
