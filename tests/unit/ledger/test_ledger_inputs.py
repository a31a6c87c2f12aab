"""The Ledger's refusals, each a 422 naming its field before any write, and its answer when the database fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from downcity.errors import DowncityHTTPError
from downcity.ledger import Balance, Ledger
from downcity.store import Database


@pytest.fixture
async def ledger(db: Database) -> AsyncIterator[Ledger]:
    started = Ledger(db)
    await started.start()
    yield started
    await started.close()


async def _refusal(call: Any) -> tuple[int, str, str, str | None]:
    with pytest.raises(DowncityHTTPError) as refused:
        await call
    return refused.value.status, refused.value.type, refused.value.message, refused.value.field


async def test_a_debit_keeps_its_note(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 1_000)

    entry = await ledger.debit("refund-1", "alice", 400, note="refund of order 7")

    assert (entry.kind, entry.amount_microcredits, entry.note) == ("debit", 400, "refund of order 7")
    assert [e.note for e in await ledger.history("alice")] == ["refund of order 7", None]


async def test_a_debit_of_nothing_is_refused(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 1_000)

    refusal = await _refusal(ledger.debit("refund-1", "alice", 0))

    assert refusal == (422, "invalid_request", "amount must be greater than 0", "amount_microcredits")
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=1_000, held=0, available=1_000)


async def test_history_returns_the_newest_50_entries_unless_asked_for_more(ledger: Ledger) -> None:
    for index in range(51):
        await ledger.credit(f"top-up-{index}", "alice", 1 + index)

    default = await ledger.history("alice")
    everything = await ledger.history("alice", limit=500)

    assert [e.amount_microcredits for e in default] == list(range(51, 1, -1))
    assert [e.amount_microcredits for e in everything] == list(range(51, 0, -1))


async def test_history_pages_back_from_an_entry_id(ledger: Ledger) -> None:
    for index in range(5):
        await ledger.credit(f"top-up-{index}", "alice", 1 + index)
    newest = await ledger.history("alice", limit=2)

    older = await ledger.history("alice", limit=2, before_id=newest[-1].id)

    assert [e.amount_microcredits for e in [*newest, *older]] == [5, 4, 3, 2]


@pytest.mark.parametrize("limit", [0, 501, True, "5", 2.5])
async def test_history_refuses_a_limit_outside_1_to_500(ledger: Ledger, limit: Any) -> None:
    refusal = await _refusal(ledger.history("alice", limit=limit))

    assert refusal == (422, "invalid_request", "limit must be an integer from 1 to 500", "limit")


@pytest.mark.parametrize("before_id", [True, "7", 7.0])
async def test_history_refuses_a_before_id_that_is_not_an_integer(ledger: Ledger, before_id: Any) -> None:
    refusal = await _refusal(ledger.history("alice", before_id=before_id))

    assert refusal == (422, "invalid_request", "before_id must be an integer", "before_id")


@pytest.mark.parametrize("keys", ["call-1", ("call-1",), ["call-1"] * 10_001])
async def test_renew_refuses_anything_but_a_list_of_at_most_10000_keys(ledger: Ledger, keys: Any) -> None:
    refusal = await _refusal(ledger.renew(keys, "alice"))

    assert refusal == (422, "invalid_request", "keys must be a list of at most 10000 keys", "keys")


@pytest.mark.parametrize("key", ["", 7, None])
async def test_renew_refuses_a_key_that_is_not_a_non_empty_string(ledger: Ledger, key: Any) -> None:
    refusal = await _refusal(ledger.renew(["call-1", key], "alice"))

    assert refusal == (422, "invalid_request", "keys must be a non-empty string", "keys")


async def test_renew_answers_each_held_key_once(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 1_000)
    await ledger.reserve("call-1", "alice", 100)

    assert await ledger.renew(["call-1", "call-1", "no-such-call"], "alice") == ["call-1"]


async def test_a_write_the_database_cannot_commit_is_a_503_naming_the_failure(
    ledger: Ledger, db: Database, backend: str
) -> None:
    async with db.connect() as conn:
        await conn.execute(text("ALTER TABLE ledger_entries RENAME TO ledger_entries_gone"))
        await conn.commit()

    refusal = await _refusal(ledger.credit("top-up-1", "alice", 1_000))

    failure = {"sqlite": "OperationalError", "postgresql": "ProgrammingError"}[backend]
    assert refusal == (503, "ledger_unavailable", f"the ledger could not commit: {failure}", None)


async def test_history_keeps_a_charges_ref_note_and_metadata(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 1_000)
    await ledger.reserve("call-1", "alice", 500)
    await ledger.settle("call-1", "alice", 300, ref="req-1", note="3 images", metadata={"model": "pic"})

    [charge, credit] = await ledger.history("alice")

    assert (charge.kind, charge.amount_microcredits, charge.ref, charge.note, charge.metadata) == (
        "charge",
        300,
        "req-1",
        "3 images",
        {"model": "pic"},
    )
    assert (credit.kind, credit.ref, credit.note, credit.metadata) == ("credit", None, None, None)


async def test_history_and_renew_accept_their_bounds(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 1_000)
    await ledger.credit("top-up-2", "alice", 1_000)
    await ledger.reserve("call-1", "alice", 100)

    assert [e.idempotency_key for e in await ledger.history("alice", limit=1)] == ["top-up-2"]
    assert await ledger.renew(["call-1"] + [f"other-{i}" for i in range(9_999)], "alice") == ["call-1"]


async def test_release_refuses_an_empty_key_naming_it(ledger: Ledger) -> None:
    refusal = await _refusal(ledger.release("", user_id="alice"))

    assert refusal == (422, "invalid_request", "idempotency_key must be a non-empty string", "idempotency_key")


async def test_a_lease_of_nothing_is_refused_naming_the_amount(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    refusal = await _refusal(ledger.lease("lease:r1:0", "alice", "r1", 0, 0))
    assert refusal == (422, "invalid_request", "amount must be greater than 0", "amount_microcredits")
    assert (await ledger.balance("alice")).held == 0


async def test_a_lease_without_an_owner_is_refused_naming_the_owner(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    refusal = await _refusal(ledger.lease("lease:r1:0", "alice", "", 1_000, 0))
    assert refusal == (422, "invalid_request", "owner must be a non-empty string", "owner")
    assert (await ledger.balance("alice")).held == 0


async def test_a_lease_accepts_a_minimum_of_zero(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    lease = await ledger.lease("lease:r1:0", "alice", "r1", 1_000, 0)
    assert (lease.granted_microcredits, lease.amount_microcredits, lease.status) == (1_000, 1_000, "held")
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=10_000, held=1_000, available=9_000)


async def test_a_settles_ref_is_at_most_200_characters(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 1_000)
    await ledger.reserve("call-1", "alice", 500)
    await ledger.reserve("call-2", "alice", 500)

    refusal = await _refusal(ledger.settle("call-1", "alice", 300, ref="r" * 201))
    settled = await ledger.settle("call-2", "alice", 300, ref="r" * 200)

    assert refusal == (422, "invalid_request", "ref must be at most 200 characters", "ref")
    assert settled.entry is not None and settled.entry.ref == "r" * 200
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=700, held=500, available=200)


async def test_a_settles_lease_must_be_a_key(ledger: Ledger) -> None:
    refusal = await _refusal(ledger.settle("call-1", "alice", 300, lease=""))

    assert refusal == (422, "invalid_request", "lease must be a non-empty string", "lease")
