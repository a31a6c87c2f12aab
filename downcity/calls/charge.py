"""Which charge a successful call carries: action, then model bill, then provider bill, then price, then none.

A `Price` sits below both `bill` functions on purpose: a price is a public table, a bill is code an operator
wrote for the cases a table cannot say (a discount for a plan, a minimum per call), so the code wins, and a
provider's `bill` still covers models that declare only a price. An action's own charge wins over all: the
provider knew the real cost.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from downcity.ai.context import Context, coerce_charge
from downcity.ai.provider import ModelConfig, Provider
from downcity.calls.pricing import PricedCharge, price_charge
from downcity.errors import DowncityHTTPError
from downcity.types import ChargeDraft


def resolve_charge(
    action_charge: ChargeDraft | None,
    model: ModelConfig,
    provider: Provider,
    ctx: Context,
    output: Any,
) -> ChargeDraft | None:
    """The first charge drafted by (1) the action, (2) the model's `bill`, (3) the provider's `bill`, (4) the price.

    A `bill` returning None defers to the next level; return a zero charge to make a call free.
    """
    return resolve_priced_charge(action_charge, model, provider, ctx, output).draft


def resolve_priced_charge(
    action_charge: ChargeDraft | None,
    model: ModelConfig,
    provider: Provider,
    ctx: Context,
    output: Any,
) -> PricedCharge:
    """`resolve_charge`, with each class's cost in picocredits when the price drafted the charge."""
    if action_charge is not None:
        return PricedCharge(action_charge)
    if model.bill is not None:
        charge = _drafted(model.bill(ctx, output), f"model '{model.id}'")
        if charge is not None:
            return PricedCharge(charge)
    charge = _drafted(provider.bill(ctx, output), f"provider '{provider.id}'")
    if charge is not None:
        return PricedCharge(charge)
    return price_charge(model, ctx, output) or PricedCharge(None)


def _drafted(value: Any, owner: str) -> ChargeDraft | None:
    try:
        return coerce_charge(value)
    except (TypeError, ValidationError):
        raise DowncityHTTPError(502, "provider_error", f"the bill of {owner} returned an invalid charge") from None
