"""The Ledger's result types, the interface every ledger front shares, and shard routing."""

from __future__ import annotations

import zlib
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from downcity.errors import DowncityHTTPError

EntryKind = Literal["credit", "debit", "charge"]
HoldStatus = Literal["held", "settled", "released"]


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class Balance(_Result):
    """A user's balance, the sum of their active holds, and what is left to spend."""

    user_id: str
    balance: int
    held: int
    available: int


class LedgerEntry(_Result):
    """One committed ledger row; `amount_microcredits` is always positive, `kind` gives the sign."""

    id: int
    idempotency_key: str
    user_id: str
    kind: EntryKind
    amount_microcredits: int
    balance_after_microcredits: int
    ref: str | None
    note: str | None
    metadata: dict[str, Any] | None
    created_at_ms: int


class HoldResult(_Result):
    """The state of the reservation under one idempotency key, with the user's balance."""

    idempotency_key: str
    user_id: str
    amount_microcredits: int
    status: HoldStatus
    balance: Balance


class SettleResult(_Result):
    """A settled call: the charge applied (None for a zero charge), what was asked, and the balance after it.

    The applied charge is below `requested_microcredits` when the request exceeded the call's hold, or the
    available balance when there was no hold.
    """

    entry: LedgerEntry | None
    requested_microcredits: int
    balance: Balance
    # A settle on a credit lease: the lease was recalled (or is gone), so its owner stops admitting on it.
    lease_recalled: bool = False


class LeaseResult(_Result):
    """A credit lease after a grant or top-up: what this op granted and what the lease now holds."""

    idempotency_key: str
    user_id: str
    granted_microcredits: int
    amount_microcredits: int
    status: HoldStatus
    expires_at_ms: int | None
    balance: Balance


class LedgerPort(Protocol):
    """The async API shared by `Ledger`, `ShardedLedger` and the Ray `LedgerClient`."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def credit(self, key: str, user_id: str, amount: int, note: str | None = None) -> LedgerEntry: ...

    async def debit(self, key: str, user_id: str, amount: int, note: str | None = None) -> LedgerEntry: ...

    async def reserve(self, key: str, user_id: str, amount: int) -> HoldResult: ...

    async def settle(
        self,
        key: str,
        user_id: str,
        amount: int,
        *,
        ref: str | None = None,
        note: str | None = None,
        metadata: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        lease: str | None = None,
        lease_hold: int = 0,
    ) -> SettleResult: ...

    async def lease(self, key: str, user_id: str, owner: str, amount: int, minimum: int) -> LeaseResult: ...

    async def release(
        self, key: str, *, user_id: str | None = None, usage: dict[str, Any] | None = None
    ) -> HoldResult | None: ...

    async def renew(self, keys: list[str], user_id: str) -> list[str]: ...

    async def record_usage(self, usage: dict[str, Any]) -> None: ...

    async def balance(self, user_id: str) -> Balance: ...

    async def history(self, user_id: str, limit: int = 50, before_id: int | None = None) -> list[LedgerEntry]: ...

    async def sweep_expired_holds(self, now_ms: int | None = None) -> int: ...


CREDIT_LEASED = "credit_leased"


def credit_leased(amount: int) -> DowncityHTTPError:
    """A reserve refused while other credit of the account sits in leases, now recalled: retry shortly."""
    return DowncityHTTPError(
        402, CREDIT_LEASED, f"available balance is below the reservation of {amount} microcredits; leases recalled"
    )


def shard_of(user_id: str, shards: int) -> int:
    """The shard that owns `user_id`: a hash that is stable across processes and restarts."""
    return zlib.crc32(user_id.encode("utf-8")) % shards
