"""`HoldRenewer`: the holds of live calls are renewed, one op per user, until their call settles or is dropped."""

from __future__ import annotations

import asyncio
from typing import cast

from downcity.ledger import Ledger, LedgerPort
from downcity.ledger.renewer import HoldRenewer
from downcity.store import Database
from downcity.store.schema import holds


class _Call:
    """Stands in for a live call: the renewer only needs an object whose lifetime is the call's."""


class _RecordingLedger:
    def __init__(self, held: set[str]) -> None:
        self.held = held
        self.renewals: list[tuple[str, list[str]]] = []
        self.renewed_twice = asyncio.Event()

    async def renew(self, keys: list[str], user_id: str) -> list[str]:
        self.renewals.append((user_id, sorted(keys)))
        if len(self.renewals) >= 2:
            self.renewed_twice.set()
        return [key for key in keys if key in self.held]


def _renewer(ledger: _RecordingLedger, interval_s: float = 3600) -> HoldRenewer:
    return HoldRenewer(cast(LedgerPort, ledger), interval_s)


async def test_one_renew_per_user_covers_every_live_call_of_that_user() -> None:
    ledger = _RecordingLedger({"a-1", "a-2", "b-1"})
    renewer = _renewer(ledger)
    calls = [_Call(), _Call(), _Call()]
    renewer.track(calls[0], "a-1", "alice")
    renewer.track(calls[1], "a-2", "alice")
    renewer.track(calls[2], "b-1", "bob")
    await renewer.renew_now()
    await renewer.close()
    assert sorted(ledger.renewals) == [("alice", ["a-1", "a-2"]), ("bob", ["b-1"])]


async def test_a_key_the_ledger_no_longer_holds_stops_being_renewed() -> None:
    ledger = _RecordingLedger({"a-1"})
    renewer = _renewer(ledger)
    calls = [_Call(), _Call()]
    renewer.track(calls[0], "a-1", "alice")
    renewer.track(calls[1], "a-swept", "alice")
    await renewer.renew_now()
    await renewer.close()
    assert renewer.tracked() == [("alice", "a-1")]


async def test_an_untracked_or_dropped_call_is_not_renewed() -> None:
    ledger = _RecordingLedger({"settled", "dropped", "live"})
    renewer = _renewer(ledger)
    live, settled, dropped = _Call(), _Call(), _Call()
    renewer.track(live, "live", "alice")
    renewer.track(settled, "settled", "alice")
    renewer.track(dropped, "dropped", "alice")
    renewer.untrack("settled", "alice")
    del dropped
    await renewer.renew_now()
    await renewer.close()
    assert ledger.renewals == [("alice", ["live"])]


async def test_tracked_holds_are_renewed_every_interval_in_the_background() -> None:
    ledger = _RecordingLedger({"live"})
    renewer = _renewer(ledger, interval_s=0.01)
    call = _Call()
    renewer.track(call, "live", "alice")
    await asyncio.wait_for(ledger.renewed_twice.wait(), 5)
    await renewer.close()
    assert ledger.renewals[:2] == [("alice", ["live"]), ("alice", ["live"])]


async def test_a_live_calls_hold_survives_the_sweep_past_its_first_expiry(db: Database) -> None:
    ledger = Ledger(db)
    await ledger.start()
    renewer = HoldRenewer(ledger, 3600)
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("live", "alice", 1_000)
    await ledger.reserve("abandoned", "alice", 2_000)
    call = _Call()
    renewer.track(call, "live", "alice")
    ttl_ms = ledger.hold_expiry_s * 1000
    async with db.begin() as conn:
        await conn.execute(holds.update().values(expires_at_ms=holds.c.expires_at_ms - 2 * ttl_ms))
    await renewer.renew_now()
    released = await ledger.sweep_expired_holds()
    balance = await ledger.balance("alice")
    await renewer.close()
    await ledger.close()
    assert (released, balance.held) == (1, 1_000)
