"""The Ledger's lease grant rule (`decide` on a lease op) and the `LeaseBoard` recall block, without a database."""

from __future__ import annotations

import asyncio

import pytest

from downcity.errors import DowncityHTTPError
from downcity.ledger.ops import Account, BatchState, HoldRow, LeaseBoard, Op, decide
from downcity.ledger.types import HoldStatus, LeaseResult

NOW = 1_000_000
TTL = 120_000
COOLDOWN = 5_000
CONFLICT = "idempotency key {!r} was already used with a different amount, kind or user"


def _state(balance: int, held: int = 0, *leases: HoldRow, board: LeaseBoard | None = None) -> BatchState:
    state = BatchState({"alice": Account("alice", balance, held)}, NOW, hold_ttl_ms=TTL, leases=board or LeaseBoard())
    state.holds.update({lease.key: lease for lease in leases})
    return state


def _lease_hold(key: str, amount: int, status: HoldStatus = "held", owner: str = "r1") -> HoldRow:
    """A lease committed by an earlier batch, granted 30 s ago."""
    resolved = None if status == "held" else NOW - 1_000
    return HoldRow(key, "alice", amount, status, NOW - 30_000, resolved, NOW - 30_000 + TTL, owner)


def _lease_op(key: str, amount: int, minimum: int, owner: str | None = "r1") -> Op:
    future = asyncio.get_running_loop().create_future()
    return Op("lease", future, key, "alice", amount, owner=owner, minimum=minimum)


def _granted(state: BatchState, op: Op) -> LeaseResult:
    outcome = decide(state, op)
    assert not isinstance(outcome, DowncityHTTPError)
    result = outcome()
    assert isinstance(result, LeaseResult)
    return result


def _refused(state: BatchState, op: Op) -> DowncityHTTPError:
    outcome = decide(state, op)
    assert isinstance(outcome, DowncityHTTPError)
    return outcome


async def test_a_new_lease_expires_one_hold_ttl_after_its_grant() -> None:
    state = _state(10_000)
    lease = _granted(state, _lease_op("lease:r1:0", 2_000, 500))
    assert (lease.granted_microcredits, lease.amount_microcredits, lease.status, lease.expires_at_ms) == (
        2_000,
        2_000,
        "held",
        NOW + TTL,
    )


async def test_a_top_up_moves_the_lease_expiry_to_one_ttl_after_it_and_marks_the_row_to_be_written() -> None:
    state = _state(10_000, 2_000, _lease_hold("lease:r1:0", 2_000))
    lease = _granted(state, _lease_op("lease:r1:0", 1_000, 500))
    row = state.holds["lease:r1:0"]
    assert (lease.granted_microcredits, lease.amount_microcredits, lease.expires_at_ms) == (1_000, 3_000, NOW + TTL)
    assert (row.amount, row.expires_at_ms, row.dirty, row.is_new) == (3_000, NOW + TTL, True, False)
    assert (state.deltas["alice"].held, state.deltas["alice"].credits) == (1_000, 0)


async def test_a_top_up_of_a_lease_no_longer_held_grants_nothing_and_changes_nothing() -> None:
    state = _state(10_000, 0, _lease_hold("lease:r1:0", 2_000, status="released"))
    lease = _granted(state, _lease_op("lease:r1:0", 1_000, 500))
    assert (lease.granted_microcredits, lease.amount_microcredits, lease.status) == (0, 0, "released")
    assert (state.holds["lease:r1:0"].amount, state.holds["lease:r1:0"].dirty) == (2_000, False)
    assert (state.deltas, state.account("alice").held) == ({}, 0)


async def test_a_lease_of_one_microcredit_is_granted_and_held() -> None:
    state = _state(10_000)
    lease = _granted(state, _lease_op("lease:r1:0", 1, 1))
    assert (lease.granted_microcredits, lease.amount_microcredits, lease.status) == (1, 1, "held")
    assert (state.holds["lease:r1:0"].amount, state.account("alice").held) == (1, 1)


async def test_no_new_lease_is_granted_to_an_account_blocked_after_a_recall() -> None:
    recalled = _lease_hold("lease:r1:0", 2_000)
    board = LeaseBoard(recall_cooldown_ms=COOLDOWN)
    board.note(recalled)
    assert board.recall("alice", NOW) is True
    state = _state(10_000, 2_000, recalled, board=board)
    lease = _granted(state, _lease_op("lease:r2:0", 1_000, 500, owner="r2"))
    assert (lease.granted_microcredits, lease.amount_microcredits, lease.status) == (0, 0, "released")
    assert ("lease:r2:0" in state.holds, state.deltas) == (False, {})


async def test_a_lease_key_held_by_another_owner_is_a_conflict_naming_the_key() -> None:
    state = _state(10_000, 2_000, _lease_hold("lease:r1:0", 2_000))
    refused = _refused(state, _lease_op("lease:r1:0", 1_000, 500, owner="r2"))
    assert (refused.status, refused.type, refused.message) == (
        409,
        "idempotency_conflict",
        CONFLICT.format("lease:r1:0"),
    )


async def test_a_lease_on_the_key_of_a_ledger_entry_is_a_conflict_naming_the_key() -> None:
    state = _state(0)
    credit = Op("credit", asyncio.get_running_loop().create_future(), "top-up", "alice", 10_000)
    assert not isinstance(decide(state, credit), DowncityHTTPError)
    refused = _refused(state, _lease_op("top-up", 1_000, 500))
    assert (refused.status, refused.type, refused.message) == (409, "idempotency_conflict", CONFLICT.format("top-up"))
    assert state.account("alice").held == 0


async def test_a_lease_op_without_an_owner_is_a_programming_error() -> None:
    state = _state(10_000)
    with pytest.raises(AssertionError):
        decide(state, _lease_op("lease:r1:0", 1_000, 500, owner=None))
    assert (state.holds, state.deltas) == ({}, {})


def test_a_recall_blocks_grants_for_its_cooldown_even_once_the_leases_are_back() -> None:
    board = LeaseBoard(recall_cooldown_ms=COOLDOWN)
    board.note(_lease_hold("lease:r1:0", 2_000))
    assert board.recall("alice", NOW) is True
    board.note(_lease_hold("lease:r1:0", 2_000, status="released"))
    assert (board.live, board.recalled) == ({}, set())
    assert [board.blocked("alice", NOW), board.blocked("alice", NOW + COOLDOWN - 1)] == [True, True]
    assert board.blocked("alice", NOW + COOLDOWN) is False
    assert board.blocked_until_ms == {}


def test_a_recall_keeps_grants_blocked_past_its_cooldown_while_a_recalled_lease_is_still_out() -> None:
    board = LeaseBoard(recall_cooldown_ms=COOLDOWN)
    board.note(_lease_hold("lease:r1:0", 2_000))
    board.recall("alice", NOW)
    assert board.blocked("alice", NOW + 10 * COOLDOWN) is True
    assert board.blocked_until_ms == {"alice": NOW + COOLDOWN}
    board.note(_lease_hold("lease:r1:0", 2_000, status="released"))
    assert board.blocked("alice", NOW + 10 * COOLDOWN) is False


def test_a_recall_of_an_account_without_leases_recalls_nothing_and_blocks_nothing() -> None:
    board = LeaseBoard(recall_cooldown_ms=COOLDOWN)
    assert board.recall("alice", NOW) is False
    assert (board.blocked("alice", NOW), board.blocked_until_ms) == (False, {})
