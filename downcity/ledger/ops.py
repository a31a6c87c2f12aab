"""The Ledger's decision rules: each queued op applied in order to one batch's in-memory state.

`decide` never touches the database; it reads and mutates `BatchState` (loaded by `ledger_store`)
and returns either a refusal or a function that builds the caller's result once the batch commits.
A refusal is returned before anything is mutated, so refused ops write nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from downcity.errors import DowncityHTTPError, conflict, insufficient_balance
from downcity.ledger.types import (
    Balance,
    EntryKind,
    HoldResult,
    HoldStatus,
    LeaseResult,
    LedgerEntry,
    SettleResult,
    credit_leased,
)

logger = logging.getLogger(__name__)

OpKind = Literal["credit", "debit", "reserve", "settle", "release", "renew", "usage", "sweep", "lease"]
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
    renewed: tuple[str, ...] = ()
    # A lease op: the replica asking and the smallest grant worth having. A settle: the lease it was admitted
    # on and the call's share of it (its hold), which caps the charge like a per-call hold does.
    owner: str | None = None
    minimum: int = 0
    lease: str | None = None
    lease_hold: int = 0

    def touched_keys(self) -> tuple[str, ...]:
        """Every idempotency key the op reads or writes."""
        if self.kind == "renew":
            return self.renewed
        if self.lease is not None:
            return (self.key, self.lease)
        return (self.key,) if self.key else ()


@dataclass(eq=False)
class Account:
    """A cached `balances` row as this Ledger last knew it, moved by the batch's decisions."""

    user_id: str
    balance: int
    held: int

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
    expires_at_ms: int | None
    owner: str | None = None
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
    requested: int | None = None

    @property
    def requested_amount(self) -> int:
        """What the op asked for: more than `amount` only for a capped settle."""
        return self.requested if self.requested is not None else self.amount

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
class Delta:
    """What one batch adds to an account's `balances` row; the database applies it to the row it has."""

    credits: int = 0
    held: int = 0


@dataclass(eq=False)
class LeaseBoard:
    """What the Ledger knows of live credit leases across batches: advisory state, never written.

    `live` holds each account's held lease keys; a reserve refused while other credit sits in leases recalls
    them (their owners return what they have not spent) and blocks new grants to the account for a while, so
    the refused caller can retry against the returned credit instead of losing to credit parked elsewhere.
    """

    max_fraction: float = 0.5
    recall_cooldown_ms: int = 5_000
    live: dict[str, set[str]] = field(default_factory=dict)
    recalled: set[str] = field(default_factory=set)
    blocked_until_ms: dict[str, int] = field(default_factory=dict)

    def note(self, hold: HoldRow) -> None:
        """Track a lease hold as it now stands."""
        if hold.owner is None:
            return
        keys = self.live.setdefault(hold.user_id, set())
        if hold.status == "held":
            keys.add(hold.key)
            return
        keys.discard(hold.key)
        self.recalled.discard(hold.key)
        if not keys:
            del self.live[hold.user_id]

    def recall(self, user_id: str, now_ms: int) -> bool:
        """Recall the account's leases; True when there were any to recall."""
        keys = self.live.get(user_id)
        if not keys:
            return False
        self.recalled.update(keys)
        self.blocked_until_ms[user_id] = now_ms + self.recall_cooldown_ms
        return True

    def blocked(self, user_id: str, now_ms: int) -> bool:
        """Whether grants to the account are paused after a recall."""
        until = self.blocked_until_ms.get(user_id)
        if until is None:
            return False
        if until <= now_ms and not any(key in self.recalled for key in self.live.get(user_id, ())):
            del self.blocked_until_ms[user_id]
            return False
        return True


@dataclass(eq=False)
class BatchState:
    """Everything one batch reads and writes: cached accounts, the holds and entries of its keys.

    Decisions move the cached accounts and record the same changes as per-account deltas; only the deltas
    are written, so a stale cache can make a decision wrong (caught by the write's checks), never a row.
    """

    accounts: dict[str, Account]
    now_ms: int
    hold_ttl_ms: int = 0
    holds: dict[str, HoldRow] = field(default_factory=dict)
    entries: dict[str, EntryRow] = field(default_factory=dict)
    expired: list[str] = field(default_factory=list)
    touched: dict[str, Account] = field(default_factory=dict)
    deltas: dict[str, Delta] = field(default_factory=dict)
    new_entries: list[EntryRow] = field(default_factory=list)
    usage_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    leases: LeaseBoard = field(default_factory=lambda: LeaseBoard())

    def account(self, user_id: str) -> Account:
        """The user's account; users never seen by the database start at zero."""
        account = self.accounts.get(user_id)
        if account is None:
            account = Account(user_id, 0, 0)
            self.accounts[user_id] = account
        return account

    def change(self, user_id: str, *, credits: int = 0, held: int = 0) -> Account:
        """Move the user's balance and held amount, recording the change as a delta to write."""
        account = self.account(user_id)
        account.balance += credits
        account.held += held
        self.touched[user_id] = account
        delta = self.deltas.setdefault(user_id, Delta())
        delta.credits += credits
        delta.held += held
        return account

    def add_entry(
        self, op: Op, kind: EntryKind, amount: int, balance_after: int, requested: int | None = None
    ) -> EntryRow:
        """Record a new ledger entry of `amount` for `op`."""
        assert op.user_id is not None
        row = EntryRow(
            op.key,
            op.user_id,
            kind,
            amount,
            balance_after,
            op.ref,
            op.note,
            op.metadata,
            self.now_ms,
            requested=requested,
        )
        self.entries[op.key] = row
        self.new_entries.append(row)
        return row

    def add_hold(self, key: str, user_id: str, amount: int, status: HoldStatus, owner: str | None = None) -> HoldRow:
        """Record a new hold row; a held one expires a hold TTL from now unless renewed."""
        held = status == "held"
        resolved = None if held else self.now_ms
        expires = self.now_ms + self.hold_ttl_ms if held else None
        row = HoldRow(key, user_id, amount, status, self.now_ms, resolved, expires, owner, is_new=True)
        self.holds[key] = row
        return row

    def resolve_hold(self, hold: HoldRow, status: HoldStatus) -> None:
        """Move a hold out of `held`, freeing its amount if it was still held."""
        if hold.status == "held":
            self.change(hold.user_id, held=-hold.amount)
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


def _reused(key: str) -> DowncityHTTPError:
    return DowncityHTTPError(
        409, "idempotency_key_reused", f"idempotency key {key!r}: this key was already used by a finished call"
    )


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
    kind: EntryKind = "credit" if op.kind == "credit" else "debit"
    account = state.change(op.user_id, credits=op.amount if kind == "credit" else -op.amount)
    return state.add_entry(op, kind, op.amount, account.balance).to_entry


def _reserve(state: BatchState, op: Op) -> Outcome:
    assert op.user_id is not None
    hold = state.holds.get(op.key)
    if hold is not None:
        if (hold.user_id, hold.amount) != (op.user_id, op.amount):
            return _conflict(op.key)
        # Only a retry of the reserve itself gets its hold back: a finished call's key admits nothing.
        if hold.status != "held":
            return _reused(op.key)
        return _of_hold(hold, state.account(op.user_id).snapshot())
    entry = state.entries.get(op.key)
    if entry is not None:
        return _reused(op.key) if (entry.kind, entry.user_id) == ("charge", op.user_id) else _conflict(op.key)
    if state.account(op.user_id).available < op.amount:
        if state.leases.recall(op.user_id, state.now_ms):
            return credit_leased(op.amount)
        return insufficient_balance(f"available balance is below the reservation of {op.amount} microcredits")
    state.change(op.user_id, held=op.amount)
    hold = state.add_hold(op.key, op.user_id, op.amount, "held")
    return _of_hold(hold, state.account(op.user_id).snapshot())


def _settle_result(
    key: str, entry: EntryRow | None, requested: int, balance: Balance, *, replay: bool
) -> Callable[[], SettleResult]:
    def result() -> SettleResult:
        applied = entry.amount if entry is not None else 0
        if applied < requested and not replay:
            logger.warning("settle %r charged %d of the %d microcredits requested", key, applied, requested)
        return SettleResult(
            entry=entry.to_entry() if entry is not None else None, requested_microcredits=requested, balance=balance
        )

    return result


def _settle(state: BatchState, op: Op) -> Outcome:
    assert op.user_id is not None
    if op.lease is not None:
        return _settle_on_lease(state, op)
    entry = state.entries.get(op.key)
    hold = state.holds.get(op.key)
    if entry is not None:
        same = (entry.kind, entry.user_id, entry.requested_amount) == ("charge", op.user_id, op.amount)
        if not same:
            return _conflict(op.key)
        return _settle_result(op.key, entry, op.amount, state.account(op.user_id).snapshot(), replay=True)
    if hold is not None and hold.user_id != op.user_id:
        return _conflict(op.key)
    if hold is not None and hold.status == "settled":
        # Settled before without an entry: a zero charge, or one cut to zero (a marker's amount is the request).
        if op.amount not in (0, hold.amount):
            return _conflict(op.key)
        return _settle_result(op.key, None, op.amount, state.account(op.user_id).snapshot(), replay=True)
    cap = op.amount
    if hold is not None:
        cap = min(cap, hold.amount)
        state.resolve_hold(hold, "settled")
    # After freeing its own hold the charge still fits the available balance, so nothing is overdrawn.
    charge = max(0, min(cap, state.account(op.user_id).available))
    new_entry = None
    if charge > 0:
        account = state.change(op.user_id, credits=-charge)
        requested = op.amount if charge < op.amount else None
        new_entry = state.add_entry(op, "charge", charge, account.balance, requested)
    elif hold is None:
        # A marker so a later replay with another amount is recognised as a conflict.
        state.add_hold(op.key, op.user_id, op.amount, "settled")
    if op.usage is not None:
        state.add_usage(op.usage, charge, op.key if new_entry is not None else None)
    return _settle_result(op.key, new_entry, op.amount, state.account(op.user_id).snapshot(), replay=False)


def _settle_on_lease(state: BatchState, op: Op) -> Outcome:
    """A call admitted on a lease: the charge comes out of the lease, capped by the call's share of it.

    A lease already gone (expired, swept, returned) leaves the charge capped by the available balance, as a
    settle without a hold is; either way nothing is overdrawn.
    """
    assert op.user_id is not None and op.lease is not None
    entry = state.entries.get(op.key)
    marker = state.holds.get(op.key)
    lease = state.holds.get(op.lease)
    live = lease is not None and lease.status == "held" and lease.user_id == op.user_id and lease.owner is not None
    recalled = not live or op.lease in state.leases.recalled
    if entry is not None or marker is not None:
        same = entry is None or (entry.kind, entry.user_id, entry.requested_amount) == ("charge", op.user_id, op.amount)
        if not same:
            return _conflict(op.key)
        if marker is not None and (marker.user_id != op.user_id or op.amount not in (0, marker.amount)):
            return _conflict(op.key)
        replayed = _settle_result(op.key, entry, op.amount, state.account(op.user_id).snapshot(), replay=True)
        return lambda: replayed().model_copy(update={"lease_recalled": recalled})
    cap = min(op.amount, op.lease_hold)
    charge = 0
    if live:
        assert lease is not None
        charge = max(0, min(cap, lease.amount))
        lease.amount -= charge
        lease.dirty = True
        state.change(op.user_id, held=-charge)
    # What the lease could not cover (it was gone, or spent by a replayed grant) fits the available balance.
    charge += max(0, min(cap - charge, state.account(op.user_id).available))
    new_entry = None
    if charge > 0:
        account = state.change(op.user_id, credits=-charge)
        requested = op.amount if charge < op.amount else None
        new_entry = state.add_entry(op, "charge", charge, account.balance, requested)
    else:
        state.add_hold(op.key, op.user_id, op.amount, "settled")
    if op.usage is not None:
        state.add_usage(op.usage, charge, op.key if new_entry is not None else None)
    settled = _settle_result(op.key, new_entry, op.amount, state.account(op.user_id).snapshot(), replay=False)
    return lambda: settled().model_copy(update={"lease_recalled": recalled})


def _lease(state: BatchState, op: Op) -> Outcome:
    """Grant a new lease, or top one up, by up to `amount`: at most a fraction of the available balance.

    A grant below `minimum` is not worth a lease: nothing changes and the owner admits per call. A top-up of a
    lease that is no longer held grants nothing; its owner starts a new lease under a new key.
    """
    assert op.user_id is not None and op.owner is not None
    lease = state.holds.get(op.key)
    if lease is not None and (lease.user_id, lease.owner) != (op.user_id, op.owner):
        return _conflict(op.key)
    if op.key in state.entries:
        return _conflict(op.key)
    account = state.account(op.user_id)
    grant = 0
    if lease is None or lease.status == "held":
        offer = int(account.available * state.leases.max_fraction)
        if not state.leases.blocked(op.user_id, state.now_ms) and op.key not in state.leases.recalled:
            grant = min(op.amount, offer)
        if grant < op.minimum:
            grant = 0
    if grant > 0:
        state.change(op.user_id, held=grant)
        if lease is None:
            lease = state.add_hold(op.key, op.user_id, grant, "held", owner=op.owner)
        else:
            lease.amount += grant
            lease.expires_at_ms = state.now_ms + state.hold_ttl_ms
            lease.dirty = True
    result = LeaseResult(
        idempotency_key=op.key,
        user_id=op.user_id,
        granted_microcredits=grant,
        amount_microcredits=lease.amount if lease is not None and lease.status == "held" else 0,
        status=lease.status if lease is not None else "released",
        expires_at_ms=lease.expires_at_ms if lease is not None else None,
        balance=account.snapshot(),
    )
    return lambda: result


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


def _renew(state: BatchState, op: Op) -> Outcome:
    held: list[str] = []
    for key in op.renewed:
        hold = state.holds.get(key)
        if hold is not None and hold.status == "held" and hold.user_id == op.user_id:
            hold.expires_at_ms = state.now_ms + state.hold_ttl_ms
            hold.dirty = True
            held.append(key)
    return lambda: held


def _record_usage(state: BatchState, op: Op) -> Outcome:
    assert op.usage is not None
    state.add_usage(op.usage, 0, None)
    return lambda: None


def _sweep(state: BatchState, op: Op) -> Outcome:
    released = 0
    for key in state.expired:
        hold = state.holds[key]
        # A renewal earlier in the same batch may have moved the expiry past the sweep's time.
        if hold.status == "held" and hold.expires_at_ms is not None and hold.expires_at_ms < op.now_ms:
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
    "renew": _renew,
    "usage": _record_usage,
    "sweep": _sweep,
    "lease": _lease,
}


def decide(state: BatchState, op: Op) -> Outcome:
    """Apply `op` to the batch state: a refusal, or a function building the result after commit."""
    return _RULES[op.kind](state, op)
