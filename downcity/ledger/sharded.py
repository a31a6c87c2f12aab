"""`ShardedLedger`: ledger fronts routed by a stable hash of user_id, so one shard owns each user."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from downcity.errors import invalid
from downcity.ledger.checks import check_account
from downcity.ledger.types import Balance, HoldResult, LeaseResult, LedgerEntry, LedgerPort, SettleResult, shard_of


class ShardedLedger:
    """Ledger-like fronts routed by a stable hash of user_id, so one shard owns each user."""

    def __init__(self, shards: Sequence[LedgerPort]) -> None:
        if not shards:
            raise ValueError("ShardedLedger needs at least one shard")
        self.shards = list(shards)

    def shard_for(self, user_id: str) -> LedgerPort:
        """The shard that owns `user_id`."""
        return self.shards[shard_of(check_account(user_id), len(self.shards))]

    async def start(self) -> None:
        """Start every shard."""
        await asyncio.gather(*(shard.start() for shard in self.shards))

    async def close(self) -> None:
        """Close every shard."""
        await asyncio.gather(*(shard.close() for shard in self.shards))

    async def credit(self, key: str, user_id: str, amount: int, note: str | None = None) -> LedgerEntry:
        """Credit on the user's shard."""
        return await self.shard_for(user_id).credit(key, user_id, amount, note)

    async def debit(self, key: str, user_id: str, amount: int, note: str | None = None) -> LedgerEntry:
        """Debit on the user's shard."""
        return await self.shard_for(user_id).debit(key, user_id, amount, note)

    async def reserve(self, key: str, user_id: str, amount: int) -> HoldResult:
        """Reserve on the user's shard."""
        return await self.shard_for(user_id).reserve(key, user_id, amount)

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
    ) -> SettleResult:
        """Settle on the user's shard."""
        shard = self.shard_for(user_id)
        return await shard.settle(
            key, user_id, amount, ref=ref, note=note, metadata=metadata, usage=usage, lease=lease, lease_hold=lease_hold
        )

    async def lease(self, key: str, user_id: str, owner: str, amount: int, minimum: int) -> LeaseResult:
        """Grant or top up a credit lease on the user's shard."""
        return await self.shard_for(user_id).lease(key, user_id, owner, amount, minimum)

    async def release(
        self, key: str, *, user_id: str | None = None, usage: dict[str, Any] | None = None
    ) -> HoldResult | None:
        """Release on the shard of `user_id` (or of the usage row's user)."""
        owner = user_id if user_id is not None else (usage or {}).get("user_id")
        if owner is None and len(self.shards) > 1:
            raise invalid("user_id is required to release on a sharded ledger", field="user_id")
        shard = self.shard_for(owner) if owner is not None else self.shards[0]
        return await shard.release(key, user_id=owner, usage=usage)

    async def renew(self, keys: list[str], user_id: str) -> list[str]:
        """Renew the user's holds on their shard."""
        return await self.shard_for(user_id).renew(keys, user_id)

    async def record_usage(self, usage: dict[str, Any]) -> None:
        """Record usage on the shard of the row's user."""
        owner = usage.get("user_id") if isinstance(usage, dict) else None
        # Without a usable user id, any shard gives the caller the 422 naming usage.user_id.
        shard = self.shard_for(owner) if isinstance(owner, str) and owner else self.shards[0]
        await shard.record_usage(usage)

    async def balance(self, user_id: str) -> Balance:
        """The user's balance from their shard."""
        return await self.shard_for(user_id).balance(user_id)

    async def history(self, user_id: str, limit: int = 50, before_id: int | None = None) -> list[LedgerEntry]:
        """The user's entries from their shard."""
        return await self.shard_for(user_id).history(user_id, limit, before_id)

    async def sweep_expired_holds(self, now_ms: int | None = None) -> int:
        """Sweep every shard; the total released."""
        counts = await asyncio.gather(*(shard.sweep_expired_holds(now_ms) for shard in self.shards))
        return sum(counts)
