"""Releasing a hold: what comes back for each state of the key, which usage row is written, and who may release."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from downcity.errors import DowncityHTTPError
from downcity.ledger import Balance, HoldResult, Ledger
from downcity.store import Database
from downcity.store.schema import usage_records


@pytest.fixture
async def ledger(db: Database) -> AsyncIterator[Ledger]:
    started = Ledger(db)
    await started.start()
    yield started
    await started.close()


def _usage(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "city_id": "city-1",
        "user_id": "alice",
        "pathway": "text",
        "status": "error",
        "http_status": 502,
        "error_type": "upstream_error",
    }


async def _usage_rows(db: Database) -> list[tuple[str, str, int]]:
    async with db.connect() as conn:
        rows = await conn.execute(select(usage_records).order_by(usage_records.c.request_id))
        return [(row.request_id, row.status, row.charge_microcredits) for row in rows]


async def test_releasing_a_held_hold_frees_it_and_writes_its_usage_row_at_no_charge(
    ledger: Ledger, db: Database
) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)

    released = await ledger.release("call-1", usage=_usage("req-1"))
    again = await ledger.release("call-1", usage=_usage("req-2"))

    free = Balance(user_id="alice", balance=10_000, held=0, available=10_000)
    assert released == HoldResult(
        idempotency_key="call-1", user_id="alice", amount_microcredits=3_000, status="released", balance=free
    )
    assert again == released
    assert await _usage_rows(db) == [("req-1", "error", 0)]


async def test_releasing_a_settled_hold_changes_nothing(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    await ledger.settle("call-1", "alice", 1_000)

    released = await ledger.release("call-1", usage=_usage("req-1"))

    assert released is not None
    assert (released.status, released.balance) == (
        "settled",
        Balance(user_id="alice", balance=9_000, held=0, available=9_000),
    )
    assert await _usage_rows(db) == []


async def test_releasing_a_key_that_charged_without_a_hold_reports_it_settled_at_nothing(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)

    released = await ledger.release("top-up-1", user_id="alice")

    assert released == HoldResult(
        idempotency_key="top-up-1",
        user_id="alice",
        amount_microcredits=0,
        status="settled",
        balance=Balance(user_id="alice", balance=10_000, held=0, available=10_000),
    )


async def test_releasing_an_unknown_key_returns_nothing_and_still_records_the_usage_row(
    ledger: Ledger, db: Database
) -> None:
    assert await ledger.release("never-held", usage=_usage("req-1")) is None
    assert await ledger.release("never-held-2") is None
    assert await _usage_rows(db) == [("req-1", "error", 0)]


async def test_another_user_cannot_release_a_hold(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)

    with pytest.raises(DowncityHTTPError) as refused:
        await ledger.release("call-1", user_id="mallory")

    assert (refused.value.status, refused.value.type, refused.value.message) == (
        409,
        "idempotency_conflict",
        "idempotency key 'call-1' was already used with a different amount, kind or user",
    )
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=10_000, held=3_000, available=7_000)


async def test_another_user_cannot_release_a_key_that_charged_without_a_hold(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)

    with pytest.raises(DowncityHTTPError) as refused:
        await ledger.release("top-up-1", user_id="mallory", usage=_usage("req-1"))

    assert (refused.value.status, refused.value.type, refused.value.message) == (
        409,
        "idempotency_conflict",
        "idempotency key 'top-up-1' was already used with a different amount, kind or user",
    )
    assert await _usage_rows(db) == []


async def test_a_shard_refuses_a_release_that_does_not_name_its_user(db: Database) -> None:
    shard = Ledger(db, shard=(0, 2))
    await shard.start()
    try:
        with pytest.raises(DowncityHTTPError) as refused:
            await shard.release("call-1")
    finally:
        await shard.close()

    assert (refused.value.status, refused.value.message, refused.value.field) == (
        422,
        "user_id is required to release on a sharded ledger",
        "user_id",
    )
