"""The Ledger's decision rules: each queued op applied in order to one batch's in-memory state.

`decide` never touches the database; it reads and mutates `BatchState` (loaded by `ledger_store`)
and returns either a refusal or a function that builds the caller's result once the batch commits.
A refusal is returned before anything is mutated, so refused ops write nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from downcity.errors import DowncityHTTPError, conflict, insufficient_balance
from downcity.ledger.types import Balance, EntryKind, HoldResult, HoldStatus, LedgerEntry, SettleResult

OpKind = Literal["credit", "debit", "reserve", "settle", "release", "usage", "sweep"]
Outcome = Callable[[], Any] | DowncityHTTPError


@dataclass(eq=False)
class Op:
    """One queued ledger operation and the future its caller awaits."""

    kind: OpKind
    future: asyncio.Future[Any]
    key: str = ""
    user_id: str | None = None
    amount: int = 0
    ref: str | None = None
    note: str | None = None
    metadata: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    now_ms: int = 0


@dataclass(eq=False)
class Account:
    """A cached `balances` row; `persisted` is False until the row exists in the database."""

    user_id: str
    balance: int
    held: int
    persisted: bool

    @property
    def available(self) -> int:
        """Balance minus held."""
        return self.balance - self.held

    def snapshot(self) -> Balance:
        """The account as a `Balance` at this point of the batch."""
        return Balance(user_id=self.user_id, balance=self.balance, held=self.held, available=self.balance - self.held)


@dataclass(eq=False)
class HoldRow:
    """A `holds` row as the batch sees it."""

    key: str
    user_id: str
    amount: int
    status: HoldStatus
    created_at_ms: int
    resolved_at_ms: int | None
    is_new: bool = False
    dirty: bool = False


@dataclass(eq=False)
class EntryRow:
    """A `ledger_entries` row; `id` is filled in when the batch inserts it."""

    key: str
    user_id: str
    kind: EntryKind
    amount: int
    balance_after: int
    ref: str | None
    note: str | None
    metadata: dict[str, Any] | None
    created_at_ms: int
    id: int | None = None

    def to_entry(self) -> LedgerEntry:
        """The public entry; only valid once the row has its id."""
        assert self.id is not None, "entry read before its insert"
        return LedgerEntry(
            id=self.id,
            idempotency_key=self.key,
            user_id=self.user_id,
            kind=self.kind,
            amount_microcredits=self.amount,
            balance_after_microcredits=self.balance_after,
            ref=self.ref,
            note=self.note,
            metadata=self.metadata,
            created_at_ms=self.created_at_ms,
        )


@dataclass(eq=False)
class BatchState:
    """Everything one batch reads and writes: cached accounts, the holds and entries of its keys."""

    accounts: dict[str, Account]
    now_ms: int
    holds: dict[str, HoldRow] = field(default_factory=dict)
    entries: dict[str, EntryRow] = field(default_factory=dict)
    expired: list[str] = field(default_factory=list)
    touched: dict[str, Account] = field(default_factory=dict)
    new_entries: list[EntryRow] = field(default_factory=list)
    usage_rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def account(self, user_id: str) -> Account:
        """The user's account; users never seen by the database start at zero."""
        account = self.accounts.get(user_id)
        if account is None:
            account = Account(user_id, 0, 0, persisted=False)
            self.accounts[user_id] = account
        return account

    def mutate(self, user_id: str) -> Account:
        """The user's account, marked for writing."""
        account = self.account(user_id)
        self.touched[user_id] = account
        return account

    def add_entry(self, op: Op, kind: EntryKind, balance_after: int) -> EntryRow:
        """Record a new ledger entry for `op`."""
        assert op.user_id is not None
        row = EntryRow(op.key, op.user_id, kind, op.amount, balance_after, op.ref, op.note, op.metadata, self.now_ms)
        self.entries[op.key] = row
        self.new_entries.append(row)
        return row

    def add_hold(self, key: str, user_id: str, amount: int, status: HoldStatus) -> HoldRow:
        """Record a new hold row."""
        resolved = None if status == "held" else self.now_ms
        row = HoldRow(key, user_id, amount, status, self.now_ms, resolved, is_new=True)
        self.holds[key] = row
        return row

    def resolve_hold(self, hold: HoldRow, status: HoldStatus) -> None:
        """Move a hold out of `held`, freeing its amount if it was still held."""
        if hold.status == "held":
            self.mutate(hold.user_id).held -= hold.amount
        hold.status = status
        hold.resolved_at_ms = self.now_ms
        hold.dirty = True

    def add_usage(self, usage: dict[str, Any], charge: int, entry_key: str | None) -> None:
        """Queue a usage row; the first row for a request id wins."""
        row = {**usage, "charge_microcredits": charge, "ledger_entry_key": entry_key}
        self.usage_rows.setdefault(row["request_id"], row)


def _hold_result(key: str, user_id: str, amount: int, status: HoldStatus, balance: Balance) -> Outcome:
    result = HoldResult(
        idempotency_key=key, user_id=user_id, amount_microcredits=amount, status=status, balance=balance
    )
    return lambda: result


def _of_hold(hold: HoldRow, balance: Balance) -> Outcome:
    return _hold_result(hold.key, hold.user_id, hold.amount, hold.status, balance)


def _conflict(key: str) -> DowncityHTTPError:
    return conflict(f"idempotency key {key!r} was already used with a different amount, kind or user")


def _credit_or_debit(state: BatchState, op: Op) -> Outcome:
    assert op.user_id is not None
    existing = state.entries.get(op.key)
    if existing is not None:
        same = (existing.kind, existing.user_id, existing.amount) == (op.kind, op.user_id, op.amount)
        return existing.to_entry if same else _conflict(op.key)
    if op.key in state.holds:
        return _conflict(op.key)
    if op.kind == "debit" and state.account(op.user_id).available < op.amount:
        return insufficient_balance(f"available balance is below the debit of {op.amount} microcredits")
    account = state.mutate(op.user_id)
    account.balance += op.amount if op.kind == "credit" else -op.amount
    return state.add_entry(op, "credit" if op.kind == "credit" else "debit", account.balance).to_entry


def _reserve(state: BatchState, op: Op) -> Outcome:
    assert op.user_id is not None
    hold = state.holds.get(op.key)
    if hold is not None:
        if hold.user_id != op.user_id or (hold.status != "settled" and hold.amount != op.amount):
            return _conflict(op.key)
        return _of_hold(hold, state.account(op.user_id).snapshot())
    entry = state.entries.get(op.key)
    if entry is not None:
        if entry.kind != "charge" or entry.user_id != op.user_id:
            return _conflict(op.key)
        # Settled directly without a hold: report the settled state and hold nothing.
        return _hold_result(op.key, op.user_id, 0, "settled", state.account(op.user_id).snapshot())
    if state.account(op.user_id).available < op.amount:
        return insufficient_balance(f"available balance is below the reservation of {op.amount} microcredits")
    state.mutate(op.user_id).held += op.amount
    hold = state.add_hold(op.key, op.user_id, op.amount, "held")
    return _of_hold(hold, state.account(op.user_id).snapshot())


def _settle_result(entry: EntryRow | None, balance: Balance) -> Callable[[], SettleResult]:
    return lambda: SettleResult(entry=entry.to_entry() if entry is not None else None, balance=balance)


def _settle(state: BatchState, op: Op) -> Outcome:
    assert op.user_id is not None
    entry = state.entries.get(op.key)
    hold = state.holds.get(op.key)
    if entry is not None:
        same = (entry.kind, entry.user_id, entry.amount) == ("charge", op.user_id, op.amount)
        return _settle_result(entry, state.account(op.user_id).snapshot()) if same else _conflict(op.key)
    if hold is not None and hold.user_id != op.user_id:
        return _conflict(op.key)
    if hold is not None and hold.status == "settled":
        # Settled before with a zero charge (no entry): only a zero replay matches.
        if op.amount != 0:
            return _conflict(op.key)
        return _settle_result(None, state.account(op.user_id).snapshot())
    if hold is not None:
        state.resolve_hold(hold, "settled")
    account = state.mutate(op.user_id)
    new_entry = None
    if op.amount > 0:
        account.balance -= op.amount
        new_entry = state.add_entry(op, "charge", account.balance)
    elif hold is None:
        # A zero-amount marker so a later replay with another amount is recognised as a conflict.
        state.add_hold(op.key, op.user_id, 0, "settled")
    if op.usage is not None:
        state.add_usage(op.usage, op.amount, op.key if new_entry is not None else None)
    return _settle_result(new_entry, account.snapshot())


def _release(state: BatchState, op: Op) -> Outcome:
    hold = state.holds.get(op.key)
    entry = state.entries.get(op.key)
    owner = hold.user_id if hold is not None else entry.user_id if entry is not None else None
    if op.user_id is not None and owner is not None and owner != op.user_id:
        return _conflict(op.key)
    if hold is not None:
        if hold.status == "held":
            state.resolve_hold(hold, "released")
            if op.usage is not None:
                state.add_usage(op.usage, 0, None)
        return _of_hold(hold, state.account(hold.user_id).snapshot())
    if entry is not None:
        return _hold_result(op.key, entry.user_id, 0, "settled", state.account(entry.user_id).snapshot())
    if op.usage is not None:
        state.add_usage(op.usage, 0, None)
    return lambda: None


def _record_usage(state: BatchState, op: Op) -> Outcome:
    assert op.usage is not None
    state.add_usage(op.usage, 0, None)
    return lambda: None


def _sweep(state: BatchState, op: Op) -> Outcome:
    released = 0
    for key in state.expired:
        hold = state.holds[key]
        if hold.status == "held":
            state.resolve_hold(hold, "released")
            released += 1
    state.expired.clear()
    return lambda: released


_RULES: dict[OpKind, Callable[[BatchState, Op], Outcome]] = {
    "credit": _credit_or_debit,
    "debit": _credit_or_debit,
    "reserve": _reserve,
    "settle": _settle,
    "release": _release,
    "usage": _record_usage,
    "sweep": _sweep,
}


def decide(state: BatchState, op: Op) -> Outcome:
    """Apply `op` to the batch state: a refusal, or a function building the result after commit."""
    return _RULES[op.kind](state, op)
