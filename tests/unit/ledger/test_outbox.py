"""The settle outbox: charges written while the Ledger was down are applied once, when it drains them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from downcity.ledger import Ledger
from downcity.ledger.outbox import Outbox, PendingSettle
from downcity.store import Database
from downcity.store.database import now_ms
from downcity.store.schema import ledger_entries, settle_outbox, usage_records


def _usage(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "city_id": "web",
        "user_id": "alice",
        "pathway": "text",
        "status": "ok",
        "http_status": 200,
        "created_at_ms": now_ms(),
    }


def _pending(key: str, amount: int = 300) -> PendingSettle:
    return PendingSettle(key, "alice", amount, ref=None, note="owed", metadata=None, usage=_usage(key))


async def _count(db: Database, table: Any) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def _funded_ledger(db: Database) -> Ledger:
    ledger = Ledger(db)
    await ledger.start()
    await ledger.credit("seed", "alice", 1_000)
    await ledger.reserve("call:1", "alice", 500)
    return ledger


async def test_a_drained_settle_charges_once_from_its_hold_and_leaves_the_outbox(db: Database) -> None:
    ledger = await _funded_ledger(db)
    outbox = Outbox(db)
    await outbox.put(_pending("call:1"))
    await outbox.put(_pending("call:1"))

    applied = await outbox.drain(ledger, ledger.owns)
    again = await outbox.drain(ledger, ledger.owns)

    balance = await ledger.balance("alice")
    await ledger.close()
    assert (applied, again, balance.balance, balance.held) == (1, 0, 700, 0)
    assert (await _count(db, settle_outbox), await _count(db, usage_records), await _count(db, ledger_entries)) == (
        0,
        1,
        2,
    )


async def test_a_settle_that_reached_the_ledger_before_its_outbox_row_is_not_applied_twice(db: Database) -> None:
    ledger = await _funded_ledger(db)
    await ledger.settle("call:1", "alice", 300, note="owed", usage=_usage("call:1"))
    outbox = Outbox(db)
    await outbox.put(_pending("call:1"))

    applied = await outbox.drain(ledger, ledger.owns)

    balance = await ledger.balance("alice")
    await ledger.close()
    assert (applied, balance.balance, await _count(db, ledger_entries), await _count(db, settle_outbox)) == (
        1,
        700,
        2,
        0,
    )


async def test_a_drain_skips_accounts_of_other_shards(db: Database) -> None:
    ledger = await _funded_ledger(db)
    outbox = Outbox(db)
    await outbox.put(_pending("call:1"))

    applied = await outbox.drain(ledger, lambda user_id: False)

    await ledger.close()
    assert (applied, await _count(db, settle_outbox)) == (0, 1)


async def _lease_holds(db: Database) -> dict[str, int | None]:
    query = select(settle_outbox.c.idempotency_key, settle_outbox.c.lease_hold_microcredits)
    async with db.connect() as conn:
        return {key: lease_hold for key, lease_hold in await conn.execute(query)}


async def test_an_owed_settle_on_a_lease_keeps_the_calls_share_of_it(db: Database) -> None:
    outbox = Outbox(db)
    owed = PendingSettle(
        "call:1", "alice", 300, ref=None, note="owed", metadata=None, usage=None, lease="lease:r1:0", lease_hold=500
    )
    await outbox.put(owed)

    assert await outbox.pending() == [owed]
    assert await _lease_holds(db) == {"call:1": 500}


async def test_an_owed_settle_without_a_lease_stores_no_share(db: Database) -> None:
    outbox = Outbox(db)
    await outbox.put(_pending("call:1"))

    assert [(owed.lease, owed.lease_hold) for owed in await outbox.pending()] == [(None, 0)]
    assert await _lease_holds(db) == {"call:1": None}


async def test_a_drained_settle_keeps_its_ref_note_and_metadata(db: Database) -> None:
    ledger = await _funded_ledger(db)
    pending = PendingSettle(
        "call:1", "alice", 300, ref="req-1", note="3 images", metadata={"model": "pic"}, usage=_usage("call:1")
    )
    await Outbox(db).put(pending)

    await Outbox(db).drain(ledger, ledger.owns)

    [charge, _] = await ledger.history("alice")
    await ledger.close()
    assert (charge.idempotency_key, charge.amount_microcredits, charge.ref, charge.note, charge.metadata) == (
        "call:1",
        300,
        "req-1",
        "3 images",
        {"model": "pic"},
    )
