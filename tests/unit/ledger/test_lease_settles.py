"""The Ledger's rule for a settle on a credit lease (`decide` on a settle op with `lease`), without a database."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import pytest

from downcity.errors import DowncityHTTPError
from downcity.ledger.ops import Account, BatchState, HoldRow, LeaseBoard, Op, decide
from downcity.ledger.types import HoldStatus, SettleResult

NOW = 1_000_000
TTL = 120_000
LEASE = "lease:r1:0"
SHARE = 500
CONFLICT = "idempotency key {!r} was already used with a different amount, kind or user"
_IDS = itertools.count(1)


def _leased(balance: int = 10_000, lease_amount: int = 4_000, status: HoldStatus = "held") -> BatchState:
    """Alice's account with the lease `LEASE` committed by an earlier batch (held, or since gone)."""
    held = lease_amount if status == "held" else 0
    resolved = None if status == "held" else NOW - 1_000
    lease = HoldRow(LEASE, "alice", lease_amount, status, NOW - 30_000, resolved, NOW - 30_000 + TTL, "r1")
    board = LeaseBoard()
    board.note(lease)
    state = BatchState({"alice": Account("alice", balance, held)}, NOW, hold_ttl_ms=TTL, leases=board)
    state.holds[LEASE] = lease
    return state


def _settle_op(key: str, amount: int, usage: dict[str, Any] | None = None) -> Op:
    future = asyncio.get_running_loop().create_future()
    return Op("settle", future, key, "alice", amount, usage=usage, lease=LEASE, lease_hold=SHARE)


def _settled(state: BatchState, op: Op) -> SettleResult:
    """Decide `op`, give the batch's new entries their ids as its commit would, and build the result."""
    outcome = decide(state, op)
    assert not isinstance(outcome, DowncityHTTPError)
    for entry in state.new_entries:
        if entry.id is None:
            entry.id = next(_IDS)
    result = outcome()
    assert isinstance(result, SettleResult)
    return result


def _refused(state: BatchState, op: Op) -> DowncityHTTPError:
    outcome = decide(state, op)
    assert isinstance(outcome, DowncityHTTPError)
    return outcome


def _charged(result: SettleResult) -> int | None:
    return result.entry.amount_microcredits if result.entry is not None else None


async def test_a_lease_settle_of_nothing_charges_nothing_and_leaves_the_lease_whole() -> None:
    state = _leased()
    settled = _settled(state, _settle_op("call:1", 0))
    marker = state.holds["call:1"]
    assert (_charged(settled), settled.requested_microcredits, settled.lease_recalled) == (None, 0, False)
    assert (state.holds[LEASE].amount, state.account("alice").balance, state.account("alice").held) == (
        4_000,
        10_000,
        4_000,
    )
    assert (marker.user_id, marker.amount, marker.status, marker.owner) == ("alice", 0, "settled", None)
    assert state.new_entries == []


async def test_a_lease_settle_of_one_microcredit_charges_it_from_the_lease() -> None:
    state = _leased()
    settled = _settled(state, _settle_op("call:1", 1))
    assert (_charged(settled), state.holds[LEASE].amount, state.holds[LEASE].dirty) == (1, 3_999, True)
    assert settled.balance.model_dump() == {"user_id": "alice", "balance": 9_999, "held": 3_999, "available": 6_000}


async def test_a_lease_settle_with_nothing_to_charge_marks_its_key_settled_at_the_amount_asked() -> None:
    state = _leased(balance=0, status="released")
    settled = _settled(state, _settle_op("call:1", 300))
    marker = state.holds["call:1"]
    assert (_charged(settled), settled.requested_microcredits, settled.lease_recalled) == (None, 300, True)
    assert (marker.key, marker.user_id, marker.amount, marker.status, marker.owner, marker.is_new) == (
        "call:1",
        "alice",
        300,
        "settled",
        None,
        True,
    )
    assert (marker.resolved_at_ms, marker.expires_at_ms) == (NOW, None)


async def test_an_uncapped_lease_settle_records_no_separate_request() -> None:
    state = _leased()
    settled = _settled(state, _settle_op("call:1", 300))
    assert (_charged(settled), settled.requested_microcredits) == (300, 300)
    assert (state.entries["call:1"].amount, state.entries["call:1"].requested) == (300, None)


async def test_a_capped_lease_settle_records_what_was_asked_and_its_replay_is_the_same_settle() -> None:
    state = _leased()
    first = _settled(state, _settle_op("call:1", 900))
    again = _settled(state, _settle_op("call:1", 900))
    assert (state.entries["call:1"].amount, state.entries["call:1"].requested) == (SHARE, 900)
    assert first.entry is not None and again.entry is not None
    assert (again.entry.id, again.entry.amount_microcredits, again.requested_microcredits) == (
        first.entry.id,
        SHARE,
        900,
    )
    assert (state.holds[LEASE].amount, len(state.new_entries)) == (4_000 - SHARE, 1)


async def test_a_capped_lease_settle_warns_naming_its_key_and_its_replay_does_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = _leased()
    with caplog.at_level(logging.WARNING, logger="downcity.ledger.ops"):
        _settled(state, _settle_op("call:1", 900))
        first = [record.getMessage() for record in caplog.records]
        _settled(state, _settle_op("call:1", 900))
    assert first == ["settle 'call:1' charged 500 of the 900 microcredits requested"]
    assert [record.getMessage() for record in caplog.records] == first


async def test_a_charged_lease_settles_usage_row_names_its_entry() -> None:
    state = _leased()
    _settled(state, _settle_op("call:1", 300, usage={"request_id": "req-1"}))
    assert state.usage_rows == {
        "req-1": {"request_id": "req-1", "charge_microcredits": 300, "ledger_entry_key": "call:1"}
    }


async def test_an_uncharged_lease_settles_usage_row_names_no_entry() -> None:
    state = _leased(balance=0, status="released")
    _settled(state, _settle_op("call:1", 300, usage={"request_id": "req-1"}))
    assert state.usage_rows == {"req-1": {"request_id": "req-1", "charge_microcredits": 0, "ledger_entry_key": None}}


async def test_a_lease_settle_that_charged_nothing_replays_at_its_amount_or_zero_without_charging() -> None:
    state = _leased(balance=0, status="released")
    _settled(state, _settle_op("call:1", 300))
    state.change("alice", credits=1_000)
    replays = [_settled(state, _settle_op("call:1", amount)) for amount in (300, 0)]
    assert [(_charged(replay), replay.requested_microcredits, replay.lease_recalled) for replay in replays] == [
        (None, 300, True),
        (None, 0, True),
    ]
    assert (state.new_entries, state.account("alice").balance, state.holds["call:1"].amount) == ([], 1_000, 300)


async def test_a_lease_settle_that_charged_nothing_replayed_with_another_amount_is_a_conflict_naming_the_key() -> None:
    state = _leased(balance=0, status="released")
    _settled(state, _settle_op("call:1", 300))
    state.change("alice", credits=1_000)
    refused = _refused(state, _settle_op("call:1", 500))
    assert (refused.status, refused.type, refused.message) == (409, "idempotency_conflict", CONFLICT.format("call:1"))
    assert (state.new_entries, state.account("alice").balance) == ([], 1_000)


async def test_a_charged_lease_settle_replayed_with_another_amount_is_a_conflict_naming_the_key() -> None:
    state = _leased()
    _settled(state, _settle_op("call:1", 300))
    refused = _refused(state, _settle_op("call:1", 400))
    assert (refused.status, refused.type, refused.message) == (409, "idempotency_conflict", CONFLICT.format("call:1"))
    assert (state.holds[LEASE].amount, state.account("alice").balance) == (3_700, 9_700)


async def test_a_replayed_settle_on_a_gone_lease_still_reports_the_lease_recalled() -> None:
    state = _leased()
    _settled(state, _settle_op("call:1", 300))
    state.resolve_hold(state.holds[LEASE], "released")
    replay = _settled(state, _settle_op("call:1", 300))
    assert (_charged(replay), replay.requested_microcredits, replay.lease_recalled) == (300, 300, True)
