"""Admission: the one billable rule and the one check that lets a call or a job reach its provider."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from downcity.ai.provider import ModelConfig
from downcity.calls.pricing import hold_of
from downcity.ledger.types import LedgerPort


async def admit(ledger: LedgerPort, key: str, user_id: str, model: ModelConfig, input: Mapping[str, Any]) -> bool:
    """Reserve a billable model's hold under `key` (402 when the available balance is short); True when held.

    Every billable model has a hold, declared or derived from its price (`ModelConfig` refuses one with
    neither), so nothing billable runs unheld.
    """
    if not model.billable:
        return False
    await ledger.reserve(key, user_id, hold_of(model, input))
    return True
