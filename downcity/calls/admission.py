"""Admission: the one billable rule and the one check that lets a call or a job reach its provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from downcity.ai.provider import ModelConfig
from downcity.calls.pricing import hold_of
from downcity.errors import DowncityHTTPError, insufficient_balance
from downcity.ledger.leases import LeaseBook, Ticket
from downcity.ledger.types import CREDIT_LEASED, LedgerPort

_FIRST_RECALL_POLL_S = 0.02
_MAX_RECALL_POLL_S = 0.25


@dataclass(frozen=True)
class Admission:
    """A billable call's durable hold: its share of a replica's credit lease (`ticket`), or (None) its own hold
    under its key."""

    ticket: Ticket | None = None


async def admit(
    ledger: LedgerPort,
    key: str,
    user_id: str,
    model: ModelConfig,
    input: Mapping[str, Any],
    leases: LeaseBook | None = None,
    recall_wait_s: float = 0.0,
) -> Admission | None:
    """Admit a billable model's call inside a durable hold (402 when the available balance is short).

    On a lease of `leases` when one covers the hold, with no Ledger trip; otherwise the hold is reserved under
    `key`. A reserve refused while credit sits in other replicas' leases waits up to `recall_wait_s` for the
    recalled leases to come back, so credit parked in a lease never refuses a call the balance covers.
    Every billable model has a hold, declared or derived from its price (`ModelConfig` refuses one with
    neither), so nothing billable runs unheld.
    """
    if not model.billable:
        return None
    amount = hold_of(model, input)
    if leases is not None:
        ticket = await leases.admit(user_id, amount)
        if ticket is not None:
            return Admission(ticket)
    await reserve(ledger, key, user_id, amount, recall_wait_s)
    return Admission()


async def reserve(ledger: LedgerPort, key: str, user_id: str, amount: int, recall_wait_s: float) -> None:
    """Reserve a per-call hold; refused while credit sits in recalled leases, retry for up to `recall_wait_s`."""
    deadline = time.monotonic() + recall_wait_s
    pause = _FIRST_RECALL_POLL_S
    while True:
        try:
            await ledger.reserve(key, user_id, amount)
            return
        except DowncityHTTPError as refused:
            if refused.type != CREDIT_LEASED:
                raise
            if time.monotonic() + pause > deadline:
                raise insufficient_balance(
                    f"available balance is below the reservation of {amount} microcredits"
                ) from None
        await asyncio.sleep(pause)
        pause = min(pause * 2, _MAX_RECALL_POLL_S)
