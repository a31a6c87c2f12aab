"""The Ledger's SQL: load what one batch needs and write its outcome, one statement per table, or in one trip."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from downcity.ledger.bulk import (
    PG_ONE_TRIP,
    BalanceRows,
    HoldChange,
    add_balance_deltas,
    hold_columns,
    insert_entries,
    insert_ignoring_duplicates,
    insert_many,
    select_in,
    update_holds,
)
from downcity.ledger.ops import Account, BatchState, EntryRow, HoldRow, Op
from downcity.store.database import Database
from downcity.store.schema import balances, holds, ledger_entries, usage_records

# asyncpg prepares every statement; a generic plan cached while the tables were small would then
# scan them in full for every key lookup as they grow. Custom plans cost little at batch granularity.
_CUSTOM_PLANS = text("SET LOCAL plan_cache_mode = force_custom_plan")


def _hold_row(row: Any) -> HoldRow:
    return HoldRow(
        row.idempotency_key,
        row.user_id,
        row.amount_microcredits,
        row.status,
        row.created_at_ms,
        row.resolved_at_ms,
        row.expires_at_ms,
        row.owner,
    )


def entry_row(row: Any) -> EntryRow:
    """An `EntryRow` from a selected `ledger_entries` row."""
    return EntryRow(
        row.idempotency_key,
        row.user_id,
        row.kind,
        row.amount_microcredits,
        row.balance_after_microcredits,
        row.ref,
        row.note,
        row.metadata,
        row.created_at_ms,
        id=row.id,
        requested=row.requested_microcredits,
    )


async def _load_expired(conn: AsyncConnection, state: BatchState, now_ms: int, owns: Callable[[str], bool]) -> None:
    query = select(holds).where(holds.c.status == "held", holds.c.expires_at_ms < now_ms)
    for row in await conn.execute(query):
        if not owns(row.user_id):
            continue
        state.holds.setdefault(row.idempotency_key, _hold_row(row))
        state.expired.append(row.idempotency_key)


async def _load_accounts(db: Database, conn: AsyncConnection, state: BatchState, users: Iterable[str]) -> None:
    missing = [user for user in set(users) if user not in state.accounts]
    # The lock makes a first load wait for any transaction still writing these users (a dying
    # predecessor after an actor restart) instead of caching what it is about to overwrite.
    for row in await select_in(db, conn, balances.c.user_id, missing, lock=True):
        state.accounts[row.user_id] = Account(row.user_id, row.credits_microcredits, row.held_microcredits)


async def load_batch(
    db: Database,
    conn: AsyncConnection,
    state: BatchState,
    ops: list[Op],
    owns: Callable[[str], bool],
) -> None:
    """Load the holds and entries of the batch's keys, expired holds for sweeps, and uncached accounts."""
    if db.dialect == "postgresql":
        await conn.execute(_CUSTOM_PLANS)
    keys = list({key for op in ops for key in op.touched_keys()})
    for row in await select_in(db, conn, holds.c.idempotency_key, keys):
        state.holds[row.idempotency_key] = _hold_row(row)
    for row in await select_in(db, conn, ledger_entries.c.idempotency_key, keys):
        state.entries[row.idempotency_key] = entry_row(row)
    sweeps = [op.now_ms for op in ops if op.kind == "sweep"]
    if sweeps:
        await _load_expired(conn, state, max(sweeps), owns)
    users = {op.user_id for op in ops if op.user_id is not None}
    users.update(hold.user_id for hold in state.holds.values() if owns(hold.user_id))
    await _load_accounts(db, conn, state, users)


def _hold_dict(hold: HoldRow) -> dict[str, Any]:
    return {
        "idempotency_key": hold.key,
        "user_id": hold.user_id,
        "amount_microcredits": hold.amount,
        "status": hold.status,
        "created_at_ms": hold.created_at_ms,
        "resolved_at_ms": hold.resolved_at_ms,
        "expires_at_ms": hold.expires_at_ms,
        "owner": hold.owner,
    }


def _entry_dict(entry: EntryRow) -> dict[str, Any]:
    return {
        "idempotency_key": entry.key,
        "user_id": entry.user_id,
        "kind": entry.kind,
        "amount_microcredits": entry.amount,
        "balance_after_microcredits": entry.balance_after,
        "requested_microcredits": entry.requested,
        "ref": entry.ref,
        "note": entry.note,
        "metadata": entry.metadata,
        "created_at_ms": entry.created_at_ms,
    }


@dataclass
class BatchWrites:
    """What one batch writes, as rows per table, and the balances rows it expects to leave behind."""

    deltas: list[dict[str, Any]]
    expected: BalanceRows
    new_holds: list[dict[str, Any]]
    changed_holds: list[HoldChange]
    entries: list[dict[str, Any]]
    usage: list[dict[str, Any]]

    @classmethod
    def of(cls, state: BatchState) -> BatchWrites:
        """The rows the batch's decisions produced."""
        holds_ = state.holds.values()
        return cls(
            deltas=[
                {
                    "user_id": user_id,
                    "credits_microcredits": delta.credits,
                    "held_microcredits": delta.held,
                    "updated_at_ms": state.now_ms,
                }
                for user_id, delta in state.deltas.items()
            ],
            expected={user_id: (account.balance, account.held) for user_id, account in state.touched.items()},
            new_holds=[_hold_dict(hold) for hold in holds_ if hold.is_new],
            changed_holds=[
                (hold.key, hold.status, hold.resolved_at_ms, hold.expires_at_ms, hold.amount)
                for hold in holds_
                if hold.dirty and not hold.is_new
            ],
            entries=[_entry_dict(entry) for entry in state.new_entries],
            usage=list(state.usage_rows.values()),
        )

    def empty(self) -> bool:
        """Whether the batch changed nothing."""
        return not (self.deltas or self.new_holds or self.changed_holds or self.entries or self.usage)


def _assign_ids(state: BatchState, ids: dict[str, int]) -> None:
    for entry in state.new_entries:
        entry.id = ids[entry.key]


async def write_batch(db: Database, conn: AsyncConnection, state: BatchState) -> bool:
    """Write every change of the batch, one statement per table and kind of change; False when stale.

    Stale: a balance row was skipped by its guard or moved to another value than the batch decided from,
    because another writer changed it since this Ledger cached it. The caller must roll back.
    """
    writes = BatchWrites.of(state)
    if await add_balance_deltas(db, conn, writes.deltas) != writes.expected:
        return False
    await insert_many(db, conn, holds, writes.new_holds)
    await update_holds(db, conn, writes.changed_holds)
    _assign_ids(state, await insert_entries(db, conn, writes.entries))
    await insert_ignoring_duplicates(db, conn, usage_records, writes.usage)
    return True


async def commit_one_trip(db: Database, state: BatchState, assumed_new: list[str]) -> bool:
    """PostgreSQL: write the batch with one statement between BEGIN and COMMIT.

    `assumed_new` are the batch's keys the Ledger has never seen; the batch was decided as if the database
    had no hold or entry for them. When one exists after all (a retry of an op a previous actor committed),
    or a balance row is not what the batch expects (another writer moved it), the transaction rolls back and
    this returns False, so the caller redoes the batch after loading.
    """
    writes = BatchWrites.of(state)
    if writes.empty() and not assumed_new:
        return True
    async with db.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.execute(f"BEGIN; {_CUSTOM_PLANS.text}")
        try:
            rows = await raw.fetch(
                PG_ONE_TRIP,
                assumed_new,
                json.dumps(writes.deltas),
                json.dumps(writes.new_holds),
                *hold_columns(writes.changed_holds),
                json.dumps(writes.entries),
                json.dumps(writes.usage),
            )
        except asyncpg.UniqueViolationError:
            await raw.execute("ROLLBACK")
            return False
        except BaseException:
            await conn.invalidate()
            raise
        clashes = next(row["a"] for row in rows if row["kind"] == "clashes")
        moved = {row["key"]: (row["a"], row["b"]) for row in rows if row["kind"] == "balance"}
        if clashes > 0 or moved != writes.expected:
            await raw.execute("ROLLBACK")
            return False
        try:
            await raw.execute("COMMIT")
        except BaseException:
            await conn.invalidate()
            raise
    _assign_ids(state, {row["key"]: row["a"] for row in rows if row["kind"] == "entry"})
    return True
