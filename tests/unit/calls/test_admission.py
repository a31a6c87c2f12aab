"""Admission's wait for recalled leases: how often it asks the Ledger again, and when it gives up."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from downcity.ai.context import Context
from downcity.ai.provider import Provider
from downcity.calls import admission
from downcity.calls.admission import Admission, admit, reserve
from downcity.errors import DowncityHTTPError
from downcity.ledger.types import credit_leased

HOLD = 500


class Plain(Provider):
    async def text(self, ctx: Context) -> dict[str, Any]:
        return {"output": "ok"}


class LeasedLedger:
    """A Ledger refusing `refusals` reserves because credit sits in leases, then granting; counts the asks."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.asks = 0

    async def reserve(self, key: str, user_id: str, amount: int) -> None:
        self.asks += 1
        if self.asks <= self.refusals:
            raise credit_leased(amount)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Admission's pauses, taken on a clock that each pause moves on (nothing really sleeps)."""
    taken: list[float] = []
    clock = SimpleNamespace(now=0.0)

    async def sleep(seconds: float) -> None:
        taken.append(seconds)
        clock.now += seconds

    monkeypatch.setattr(admission, "time", SimpleNamespace(monotonic=lambda: clock.now))
    monkeypatch.setattr(admission, "asyncio", SimpleNamespace(sleep=sleep))
    return taken


async def test_without_a_recall_wait_a_leased_refusal_is_402_after_one_ask(pauses: list[float]) -> None:
    ledger = LeasedLedger(refusals=10)
    model = Plain("plain").model("m", hold_microcredits=HOLD)
    with pytest.raises(DowncityHTTPError) as caught:
        await admit(ledger, "k1", "c1/u1", model, {"prompt": "hi"})  # type: ignore[arg-type]
    assert (caught.value.status, caught.value.type, caught.value.message) == (
        402,
        "insufficient_balance",
        f"available balance is below the reservation of {HOLD} microcredits",
    )
    assert (ledger.asks, pauses) == (1, [])


async def test_recalled_leases_are_asked_for_again_with_doubling_pauses_up_to_the_wait(pauses: list[float]) -> None:
    ledger = LeasedLedger(refusals=100)
    with pytest.raises(DowncityHTTPError) as caught:
        await reserve(ledger, "k1", "c1/u1", HOLD, 1.0)  # type: ignore[arg-type]
    assert caught.value.type == "insufficient_balance"
    # 0.02 doubling to a cap of 0.25; the next pause would end past the 1 s wait, so the seventh refusal is final.
    assert (ledger.asks, pauses) == (7, [0.02, 0.04, 0.08, 0.16, 0.25, 0.25])


async def test_a_hold_granted_once_the_leases_came_back_admits_the_call(pauses: list[float]) -> None:
    ledger = LeasedLedger(refusals=2)
    model = Plain("plain").model("m", hold_microcredits=HOLD)
    admitted = await admit(ledger, "k1", "c1/u1", model, {"prompt": "hi"}, recall_wait_s=1.0)  # type: ignore[arg-type]
    assert (admitted, ledger.asks, pauses) == (Admission(), 3, [0.02, 0.04])


async def test_a_pause_that_ends_exactly_at_the_end_of_the_wait_is_still_taken(pauses: list[float]) -> None:
    ledger = LeasedLedger(refusals=100)
    with pytest.raises(DowncityHTTPError) as caught:
        await reserve(ledger, "k1", "c1/u1", HOLD, 0.02)  # type: ignore[arg-type]
    assert (caught.value.type, ledger.asks, pauses) == ("insufficient_balance", 2, [0.02])
