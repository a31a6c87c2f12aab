"""Ops a Ledger decides from memory (PostgreSQL's one-trip write) land in the database exactly as loaded ones."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from downcity.errors import DowncityHTTPError
from downcity.ledger import Balance, HoldResult, Ledger
from downcity.ledger import ledger as ledger_module
from downcity.ledger.ops import BatchState, Op
from downcity.store import Database
from downcity.store.schema import holds


@pytest.fixture
async def ledger(db: Database) -> AsyncIterator[Ledger]:
    started = Ledger(db)
    await started.start()
    yield started
    await started.close()


@pytest.fixture
async def two_ledgers(db: Database) -> AsyncIterator[tuple[Ledger, Ledger]]:
    """Two writers on one database, each with its own memory."""
    pair = (Ledger(db), Ledger(db))
    for started in pair:
        await started.start()
    yield pair
    for started in pair:
        await started.close()


@pytest.fixture
def loaded_batches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The kinds of ops in each batch the Ledger read from the database before deciding."""
    batches: list[list[str]] = []
    load_batch = ledger_module.load_batch

    async def recording_load_batch(
        db: Database, conn: AsyncConnection, state: BatchState, ops: list[Op], owns: Callable[[str], bool]
    ) -> None:
        batches.append([op.kind for op in ops])
        await load_batch(db, conn, state, ops, owns)

    monkeypatch.setattr(ledger_module, "load_batch", recording_load_batch)
    return batches


async def _hold_rows(db: Database) -> list[tuple[Any, ...]]:
    query = select(holds.c.idempotency_key, holds.c.user_id, holds.c.amount_microcredits, holds.c.status)
    async with db.connect() as conn:
        return [tuple(row) for row in await conn.execute(query.order_by(holds.c.idempotency_key))]


async def test_a_zero_settle_on_a_key_already_seen_unused_stores_its_settled_marker(
    ledger: Ledger, db: Database
) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    assert await ledger.release("call-1", user_id="alice") is None
    settled = await ledger.settle("call-1", "alice", 0)
    assert (settled.entry, settled.requested_microcredits) == (None, 0)
    assert await _hold_rows(db) == [("call-1", "alice", 0, "settled")]


async def test_a_zero_settle_marker_stored_from_memory_refuses_another_amount_after_a_restart(db: Database) -> None:
    first = Ledger(db)
    await first.start()
    await first.credit("top-up-1", "alice", 10_000)
    await first.release("call-1", user_id="alice")
    await first.settle("call-1", "alice", 0)
    await first.close()
    second = Ledger(db)
    await second.start()
    try:
        with pytest.raises(DowncityHTTPError) as refused:
            await second.settle("call-1", "alice", 500)
        assert (refused.value.status, refused.value.type) == (409, "idempotency_conflict")
        assert await second.balance("alice") == Balance(user_id="alice", balance=10_000, held=0, available=10_000)
    finally:
        await second.close()


async def test_a_ledger_releases_a_hold_that_another_ledger_reserved(
    two_ledgers: tuple[Ledger, Ledger], db: Database
) -> None:
    first, second = two_ledgers
    await first.credit("top-up-1", "alice", 1_000)
    await second.reserve("call-1", "alice", 500)

    released = await first.release("call-1", user_id="alice")

    free = Balance(user_id="alice", balance=1_000, held=0, available=1_000)
    assert released == HoldResult(
        idempotency_key="call-1", user_id="alice", amount_microcredits=500, status="released", balance=free
    )
    assert await first.balance("alice") == free
    assert await _hold_rows(db) == [("call-1", "alice", 500, "released")]


async def test_a_hold_whose_release_lost_its_commit_ack_is_not_renewed_back_to_held(
    ledger: Ledger, db: Database, lose_commit_ack: Callable[[], None]
) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    lose_commit_ack()
    with pytest.raises(DowncityHTTPError) as lost:
        await ledger.release("call-1", user_id="alice")
    await ledger.credit("top-up-2", "alice", 1)

    renewed = await ledger.renew(["call-1"], "alice")

    assert ((lost.value.status, lost.value.type), renewed) == ((503, "ledger_unavailable"), [])
    assert await _hold_rows(db) == [("call-1", "alice", 3_000, "released")]
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=10_001, held=0, available=10_001)


async def test_ops_on_accounts_and_keys_the_ledger_knows_load_nothing_on_postgresql(
    ledger: Ledger, db: Database, loaded_batches: list[list[str]]
) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.credit("top-up-2", "bob", 1_000)
    assert loaded_batches == [["credit"], ["credit"]]
    loaded_batches.clear()

    await ledger.reserve("call-1", "alice", 500)
    await ledger.settle("call-1", "alice", 300)
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.debit("debit-1", "bob", 100)
    await ledger.release("call-1", user_id="alice")

    # PostgreSQL decides from memory and writes in one trip; SQLite always loads.
    one_trip = db.dialect == "postgresql"
    assert loaded_batches == ([] if one_trip else [["reserve"], ["settle"], ["credit"], ["debit"], ["release"]])
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=9_700, held=0, available=9_700)
    assert await ledger.balance("bob") == Balance(user_id="bob", balance=900, held=0, available=900)


async def test_a_sweep_and_an_account_not_yet_seen_load_on_every_database(
    ledger: Ledger, db: Database, loaded_batches: list[list[str]]
) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.sweep_expired_holds()
    await ledger.credit("top-up-2", "bob", 1_000)
    await ledger.credit("top-up-3", "bob", 1_000)
    then = [] if db.dialect == "postgresql" else [["credit"]]
    assert loaded_batches == [["credit"], ["sweep"], ["credit"], *then]
