"""Admission: the one billable rule and the one check that lets a call or a job reach its provider."""

from __future__ import annotations

from downcity.ai.provider import ModelConfig
from downcity.errors import insufficient_balance
from downcity.ledger.types import LedgerPort


def is_billable(model: ModelConfig) -> bool:
    """Whether calls of `model` can be charged: the model or its provider drafts a charge."""
    return model.bill is not None or model.provider.has_bill


async def require_funds(ledger: LedgerPort, user_id: str, model: ModelConfig) -> None:
    """402 when `model` is billable and the user has nothing available."""
    if is_billable(model) and (await ledger.balance(user_id)).available <= 0:
        raise insufficient_balance("balance is empty")


async def admit(ledger: LedgerPort, key: str, user_id: str, model: ModelConfig) -> bool:
    """Reserve the model's hold under `key`, or check a billable model's funds; True when a hold was taken."""
    hold = model.hold_microcredits
    if hold:
        await ledger.reserve(key, user_id, hold)
        return True
    await require_funds(ledger, user_id, model)
    return False
