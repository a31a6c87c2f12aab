"""The settle outbox: a completed call's charge, written straight to the database when the Ledger is down.

The ingress sends a call's final frame only once its charge is durable. Normally that is the Ledger's settle;
when the Ledger cannot be reached, the same settle (key, amount, usage row) is inserted here in one statement
instead, and the final frame follows. The Ledger drains the table in the background: it applies each row as an
ordinary settle under the row's key, so a settle that did reach the Ledger before is not applied twice, and
deletes the row only after that settle committed. The call's hold stays held until then, so nothing else can
spend what the call owes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from downcity.errors import DowncityHTTPError
from downcity.ledger.types import LedgerPort, SettleResult
from downcity.store import Database
from downcity.store.database import now_ms
from downcity.store.schema import settle_outbox

logger = logging.getLogger(__name__)

DRAIN_BATCH = 500


@dataclass(frozen=True)
class PendingSettle:
    """One settle the Ledger owes: exactly the arguments of `LedgerPort.settle`."""

    key: str
    user_id: str
    amount: int
    ref: str | None
    note: str | None
    metadata: dict[str, Any] | None
    usage: dict[str, Any] | None
    lease: str | None = None
    lease_hold: int = 0

    async def apply(self, ledger: LedgerPort) -> SettleResult:
        """Settle it with `ledger` (idempotent under its key)."""
        return await ledger.settle(
            self.key,
            self.user_id,
            self.amount,
            ref=self.ref,
            note=self.note,
            metadata=self.metadata,
            usage=self.usage,
            lease=self.lease,
            lease_hold=self.lease_hold,
        )


class Outbox:
    """Writes and drains `settle_outbox`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, pending: PendingSettle) -> None:
        """Make the settle durable without the Ledger; a second put of the same key keeps the first."""
        row = {
            "idempotency_key": pending.key,
            "user_id": pending.user_id,
            "amount_microcredits": pending.amount,
            "ref": pending.ref,
            "note": pending.note,
            "metadata": pending.metadata,
            "usage": pending.usage,
            "lease": pending.lease,
            "lease_hold_microcredits": pending.lease_hold if pending.lease is not None else None,
            "created_at_ms": now_ms(),
        }
        async with self.db.begin() as conn:
            await conn.execute(self.db.insert(settle_outbox).values(row).on_conflict_do_nothing())

    async def pending(self, limit: int = DRAIN_BATCH) -> list[PendingSettle]:
        """The oldest settles still owed."""
        query = select(settle_outbox).order_by(settle_outbox.c.created_at_ms).limit(limit)
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            PendingSettle(
                key=row.idempotency_key,
                user_id=row.user_id,
                amount=row.amount_microcredits,
                ref=row.ref,
                note=row.note,
                metadata=row.metadata,
                usage=row.usage,
                lease=row.lease,
                lease_hold=row.lease_hold_microcredits or 0,
            )
            for row in rows
        ]

    async def drain(self, ledger: LedgerPort, owns: Callable[[str], bool]) -> int:
        """Apply every owed settle of the accounts `ledger` owns, then forget it; returns how many were applied."""
        applied = 0
        for pending in await self.pending():
            if not owns(pending.user_id):
                continue
            try:
                await pending.apply(ledger)
            except DowncityHTTPError as refused:
                if refused.status >= 500:
                    logger.warning("outbox settle %r failed (%r); kept for the next drain", pending.key, refused)
                    continue
                # Refused for good (the key was used otherwise): retrying cannot help, an operator must look.
                logger.error("outbox settle %r refused (%r); dropped", pending.key, refused)
            async with self.db.begin() as conn:
                await conn.execute(delete(settle_outbox).where(settle_outbox.c.idempotency_key == pending.key))
            applied += 1
        return applied
