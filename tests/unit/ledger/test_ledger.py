"""The Ledger on SQLite and PostgreSQL: balances, holds, idempotency, concurrency, sweeping, sharding."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import func, select, text

from downcity.errors import DowncityHTTPError
from downcity.ledger import Balance, Ledger, SettleResult, ShardedLedger, shard_of
from downcity.metrics import NoMetrics
from downcity.store import Database
from downcity.store.database import now_ms
from downcity.store.schema import holds, ledger_entries, usage_records

PRICE = 1_500


@pytest.fixture
async def ledger(db: Database) -> AsyncIterator[Ledger]:
    started = Ledger(db)
    await started.start()
    yield started
    await started.close()


def _usage(request_id: str, user_id: str = "alice", status: str = "ok") -> dict[str, Any]:
    return {
        "request_id": request_id,
        "city_id": "city-1",
        "user_id": user_id,
        "pathway": "text",
        "status": status,
        "http_status": 200 if status == "ok" else 502,
        "input_tokens": 12,
    }


async def _rows(db: Database, table: Any, **where: Any) -> list[Any]:
    query = select(table).where(*(table.c[name] == value for name, value in where.items()))
    async with db.connect() as conn:
        return list((await conn.execute(query)).all())


async def _count(db: Database, table: Any) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_credit_returns_the_entry_and_raises_the_balance(ledger: Ledger) -> None:
    entry = await ledger.credit("top-up-1", "alice", 10_000, note="welcome")
    assert (entry.kind, entry.amount_microcredits, entry.balance_after_microcredits, entry.note) == (
        "credit",
        10_000,
        10_000,
        "welcome",
    )
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=10_000, held=0, available=10_000)


async def test_debit_lowers_the_balance(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    entry = await ledger.debit("refund-1", "alice", 4_000)
    assert (entry.kind, entry.amount_microcredits, entry.balance_after_microcredits) == (
        "debit",
        4_000,
        6_000,
    )
    assert (await ledger.balance("alice")).balance == 6_000


async def test_debit_above_the_available_balance_is_refused_and_writes_nothing(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 7_000)
    with pytest.raises(DowncityHTTPError) as refused:
        await ledger.debit("refund-1", "alice", 4_000)
    assert (refused.value.status, refused.value.type) == (402, "insufficient_balance")
    assert await _count(db, ledger_entries) == 1
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=10_000, held=7_000, available=3_000)


async def test_balance_of_an_unknown_user_is_zero(ledger: Ledger) -> None:
    assert await ledger.balance("nobody") == Balance(user_id="nobody", balance=0, held=0, available=0)


async def test_history_lists_newest_first_and_pages_before_an_id(ledger: Ledger) -> None:
    for index in range(5):
        await ledger.credit(f"top-up-{index}", "alice", 100 * (index + 1))
    page = await ledger.history("alice", limit=2)
    assert [entry.idempotency_key for entry in page] == ["top-up-4", "top-up-3"]
    older = await ledger.history("alice", limit=10, before_id=page[-1].id)
    assert [entry.idempotency_key for entry in older] == ["top-up-2", "top-up-1", "top-up-0"]


async def test_invalid_arguments_are_refused_with_422_naming_the_field(ledger: Ledger) -> None:
    cases = [
        (ledger.credit("k", "alice", 0), "amount_microcredits"),
        (ledger.reserve("", "alice", 10), "idempotency_key"),
        (ledger.settle("k", "alice", 10, usage={"request_id": "r", "colour": "red"}), "usage.colour"),
        (ledger.settle("k", "alice", 10, usage={"request_id": "r"}), "usage.city_id"),
        (ledger.history("alice", limit=0), "limit"),
        (ledger.credit("k", "alice", 10**16), "amount_microcredits"),
        (ledger.settle("k", "alice", 10, note="nul\x00"), "note"),
        (ledger.settle("k", "alice", 10, usage={**_usage("r"), "http_status": 2**40}), "usage.http_status"),
    ]
    for call, field in cases:
        with pytest.raises(DowncityHTTPError) as refused:
            await call
        assert (refused.value.status, refused.value.field) == (422, field)


async def test_reserve_holds_the_amount(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    hold = await ledger.reserve("call-1", "alice", 3_000)
    assert (hold.status, hold.amount_microcredits) == ("held", 3_000)
    assert hold.balance == Balance(user_id="alice", balance=10_000, held=3_000, available=7_000)


async def test_reserve_above_the_available_balance_is_refused_and_holds_nothing(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 6_000)
    with pytest.raises(DowncityHTTPError) as refused:
        await ledger.reserve("call-2", "alice", 5_000)
    assert (refused.value.status, refused.value.type) == (402, "insufficient_balance")
    assert await _count(db, holds) == 1
    assert (await ledger.balance("alice")).held == 6_000


async def test_settle_charges_the_final_amount_and_settles_the_hold(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    result = await ledger.settle("call-1", "alice", 2_000, ref="gpt", metadata={"tokens": 7})
    assert result.entry is not None
    assert (result.entry.kind, result.entry.amount_microcredits, result.entry.balance_after_microcredits) == (
        "charge",
        2_000,
        8_000,
    )
    assert (result.entry.ref, result.entry.metadata) == ("gpt", {"tokens": 7})
    assert result.balance == Balance(user_id="alice", balance=8_000, held=0, available=8_000)
    [hold] = await _rows(db, holds, idempotency_key="call-1")
    assert hold.status == "settled"


async def test_settle_writes_the_usage_row_linked_to_its_entry(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    await ledger.settle("call-1", "alice", 2_000, usage=_usage("req-1"))
    [row] = await _rows(db, usage_records, request_id="req-1")
    assert (row.charge_microcredits, row.ledger_entry_key, row.input_tokens, row.status) == (
        2_000,
        "call-1",
        12,
        "ok",
    )


async def test_settle_of_zero_writes_no_entry_but_settles_the_hold(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    result = await ledger.settle("call-1", "alice", 0, usage=_usage("req-1"))
    assert result.entry is None
    assert result.balance == Balance(user_id="alice", balance=10_000, held=0, available=10_000)
    [row] = await _rows(db, usage_records, request_id="req-1")
    assert (row.charge_microcredits, row.ledger_entry_key) == (0, None)


async def test_settle_without_a_hold_charges_directly(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    result = await ledger.settle("call-1", "alice", 2_500)
    assert result.requested_microcredits == 2_500
    assert result.balance == Balance(user_id="alice", balance=7_500, held=0, available=7_500)


async def test_settle_above_the_hold_charges_only_the_hold_and_reports_the_request(
    ledger: Ledger, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 1_000)
    result = await ledger.settle("call-1", "alice", 4_000, usage=_usage("req-1"))
    assert result.entry is not None
    assert (result.entry.amount_microcredits, result.requested_microcredits) == (1_000, 4_000)
    assert result.balance == Balance(user_id="alice", balance=9_000, held=0, available=9_000)
    [row] = await _rows(db, usage_records, request_id="req-1")
    assert row.charge_microcredits == 1_000
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        "settle 'call-1' charged 1000 of the 4000 microcredits requested"
    ]


async def test_settle_without_a_hold_charges_at_most_the_available_balance(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 1_000)
    await ledger.reserve("call-1", "alice", 400)
    result = await ledger.settle("call-2", "alice", 2_500, usage=_usage("req-2"))
    assert result.entry is not None
    assert (result.entry.amount_microcredits, result.requested_microcredits) == (600, 2_500)
    assert result.balance == Balance(user_id="alice", balance=400, held=400, available=0)
    [row] = await _rows(db, usage_records, request_id="req-2")
    assert row.charge_microcredits == 600


async def test_settle_with_nothing_available_charges_nothing_and_replays_as_such(ledger: Ledger) -> None:
    first = await ledger.settle("call-1", "alice", 2_500)
    again = await ledger.settle("call-1", "alice", 2_500)
    assert first == again
    assert (first.entry, first.requested_microcredits) == (None, 2_500)
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=0, held=0, available=0)


async def test_settle_after_its_hold_was_swept_charges_at_most_the_available_balance(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    await ledger.sweep_expired_holds(now_ms=now_ms() + ledger.hold_expiry_s * 1000 + 1)
    await ledger.debit("spend-1", "alice", 9_000)
    result = await ledger.settle("call-1", "alice", 2_000)
    assert result.entry is not None
    assert (result.entry.amount_microcredits, result.requested_microcredits) == (1_000, 2_000)
    assert result.balance == Balance(user_id="alice", balance=0, held=0, available=0)


async def test_release_frees_the_hold_and_records_usage_without_an_entry(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    hold = await ledger.release("call-1", usage=_usage("req-1", status="error"))
    assert hold is not None
    assert hold.status == "released"
    assert hold.balance == Balance(user_id="alice", balance=10_000, held=0, available=10_000)
    assert await _count(db, ledger_entries) == 1
    [row] = await _rows(db, usage_records, request_id="req-1")
    assert (row.status, row.charge_microcredits, row.ledger_entry_key) == ("error", 0, None)


async def test_record_usage_writes_an_unbilled_row(ledger: Ledger, db: Database) -> None:
    await ledger.record_usage(_usage("req-1"))
    [row] = await _rows(db, usage_records, request_id="req-1")
    assert (row.user_id, row.charge_microcredits, row.ledger_entry_key) == ("alice", 0, None)


async def test_replayed_credit_returns_the_first_entry(ledger: Ledger) -> None:
    first = await ledger.credit("top-up-1", "alice", 10_000)
    assert await ledger.credit("top-up-1", "alice", 10_000) == first
    assert (await ledger.balance("alice")).balance == 10_000


async def test_replayed_reserve_returns_the_same_hold(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    first = await ledger.reserve("call-1", "alice", 3_000)
    again = await ledger.reserve("call-1", "alice", 3_000)
    assert (again.idempotency_key, again.status, again.balance) == ("call-1", "held", first.balance)


async def test_a_retried_settle_returns_the_first_result_and_charges_once(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    first = await ledger.settle("call-1", "alice", 2_000, usage=_usage("req-1"))
    again = await ledger.settle("call-1", "alice", 2_000, usage=_usage("req-1"))
    assert (again.entry, again.requested_microcredits) == (first.entry, 2_000)
    assert (await ledger.balance("alice")).balance == 8_000
    assert [row.request_id for row in await _rows(db, usage_records)] == ["req-1"]


async def test_a_retried_capped_settle_returns_the_first_result(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 1_000)
    first = await ledger.settle("call-1", "alice", 4_000)
    again = await ledger.settle("call-1", "alice", 4_000)
    assert again == SettleResult(entry=first.entry, requested_microcredits=4_000, balance=again.balance)
    assert (await ledger.balance("alice")).balance == 9_000


async def _finish_with_settle(ledger: Ledger) -> None:
    await ledger.reserve("call-1", "alice", 2_000)
    await ledger.settle("call-1", "alice", 2_000)


async def _finish_with_release(ledger: Ledger) -> None:
    await ledger.reserve("call-1", "alice", 2_000)
    await ledger.release("call-1", user_id="alice")


async def _finish_with_holdless_settle(ledger: Ledger) -> None:
    await ledger.settle("call-1", "alice", 2_000)


@pytest.mark.parametrize(
    "finish",
    [_finish_with_settle, _finish_with_release, _finish_with_holdless_settle],
    ids=["settled", "released", "settled-without-hold"],
)
async def test_reserve_on_the_key_of_a_finished_call_is_a_409_and_holds_nothing(
    ledger: Ledger, finish: Callable[[Ledger], Awaitable[None]]
) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await finish(ledger)
    before = await ledger.balance("alice")
    with pytest.raises(DowncityHTTPError) as refused:
        await ledger.reserve("call-1", "alice", 2_000)
    assert (refused.value.status, refused.value.type) == (409, "idempotency_key_reused")
    assert "this key was already used by a finished call" in str(refused.value)
    assert await ledger.balance("alice") == before
    assert before.held == 0


async def test_replayed_release_changes_nothing(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    await ledger.release("call-1", usage=_usage("req-1", status="error"))
    again = await ledger.release("call-1", usage=_usage("req-2", status="error"))
    assert again is not None
    assert again.status == "released"
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=10_000, held=0, available=10_000)
    assert await _count(db, usage_records) == 1


@pytest.mark.parametrize(
    ("replay_user", "replay_amount"),
    [("alice", 9_999), ("bob", 10_000)],
    ids=["different-amount", "different-user"],
)
async def test_reused_key_with_other_parameters_is_a_409(ledger: Ledger, replay_user: str, replay_amount: int) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    with pytest.raises(DowncityHTTPError) as refused:
        await ledger.credit("top-up-1", replay_user, replay_amount)
    assert (refused.value.status, refused.value.type) == (409, "idempotency_conflict")


async def test_reused_key_with_another_kind_is_a_409(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    for reuse in (ledger.debit("top-up-1", "alice", 10_000), ledger.settle("top-up-1", "alice", 10_000)):
        with pytest.raises(DowncityHTTPError) as refused:
            await reuse
        assert refused.value.status == 409


async def test_settle_with_another_amount_than_its_first_settle_is_a_409(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.settle("call-1", "alice", 0)
    with pytest.raises(DowncityHTTPError) as refused:
        await ledger.settle("call-1", "alice", 500)
    assert refused.value.status == 409


async def test_one_key_settled_100_times_concurrently_writes_one_entry(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    results = await asyncio.gather(*(ledger.settle("call-1", "alice", 700) for _ in range(100)))
    entry_ids = {result.entry.id if result.entry is not None else None for result in results}
    assert len(entry_ids) == 1
    assert None not in entry_ids
    assert len(await _rows(db, ledger_entries, idempotency_key="call-1")) == 1
    assert (await ledger.balance("alice")).balance == 9_300


@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "commit-per-op"])
async def test_200_concurrent_calls_admit_exactly_what_the_balance_covers(db: Database, group_commit: bool) -> None:
    ledger = Ledger(db, group_commit=group_commit)
    await ledger.start()
    await ledger.credit("top-up-1", "alice", 57 * PRICE)

    async def call(index: int) -> bool:
        try:
            await ledger.reserve(f"call-{index}", "alice", PRICE)
        except DowncityHTTPError as refused:
            assert refused.status == 402
            return False
        await ledger.settle(f"call-{index}", "alice", PRICE)
        return True

    outcomes = await asyncio.gather(*(call(index) for index in range(200)))
    await ledger.close()
    assert (outcomes.count(True), outcomes.count(False)) == (57, 143)
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=0, held=0, available=0)
    entries = await _rows(db, ledger_entries, user_id="alice")
    assert len(entries) == 58
    assert min(entry.balance_after_microcredits for entry in entries) == 0


async def _poison_charges_of(db: Database, user_id: str) -> None:
    """A database trigger failing every entry of `user_id`: a fault the Ledger cannot foresee."""
    async with db.begin() as conn:
        if db.dialect == "postgresql":
            await conn.execute(
                text(
                    "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'poisoned'; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON ledger_entries FOR EACH ROW "
                    f"WHEN (NEW.user_id = '{user_id}') EXECUTE FUNCTION poison()"
                )
            )
        else:
            await conn.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON ledger_entries "
                    f"WHEN NEW.user_id = '{user_id}' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
                )
            )


async def test_a_failing_op_does_not_fail_the_rest_of_its_batch(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-a", "alice", 10_000)
    await ledger.credit("top-up-m", "mallory", 10_000)
    await _poison_charges_of(db, "mallory")
    results = await asyncio.gather(
        ledger.settle("call-a1", "alice", 1_000),
        ledger.settle("call-m1", "mallory", 1_000),
        ledger.settle("call-a2", "alice", 2_000),
        return_exceptions=True,
    )
    failed = results[1]
    assert isinstance(failed, DowncityHTTPError)
    assert (failed.status, failed.type) == (503, "ledger_unavailable")
    assert [
        result.balance.balance if isinstance(result, SettleResult) else result for result in (results[0], results[2])
    ] == [9_000, 7_000]
    assert await ledger.balance("mallory") == Balance(user_id="mallory", balance=10_000, held=0, available=10_000)
    assert (await ledger.reserve("call-m2", "mallory", 10_000)).balance.available == 0


class BatchSizes(NoMetrics):
    """Records how many ops each committed batch held."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def ledger_batch(self, *, shard: int, ops: int, queue_depth: int, commit_s: float) -> None:
        self.sizes.append(ops)


async def test_a_batch_takes_the_queued_ops_up_to_max_batch_and_no_more(db: Database) -> None:
    recorded = BatchSizes()
    ledger = Ledger(db, max_batch=3, metrics=recorded)
    await ledger.start()
    try:
        # Ten ops queued at once (gather starts them all before the worker wakes): full batches, then the rest.
        await asyncio.gather(*(ledger.credit(f"top-up-{i}", "alice", 100) for i in range(10)))
        assert recorded.sizes == [3, 3, 3, 1]
        # A lone op commits at once, in a batch of its own.
        await ledger.credit("top-up-alone", "alice", 100)
        assert recorded.sizes[-1] == 1
        assert (await ledger.balance("alice")).balance == 1_100
    finally:
        await ledger.close()


async def test_close_queued_behind_ops_commits_them_and_stops_the_worker(db: Database) -> None:
    ledger = Ledger(db)
    await ledger.start()
    credits = [asyncio.ensure_future(ledger.credit(f"top-up-{i}", "alice", 100)) for i in range(3)]
    # One turn of the loop: each credit runs up to its queued op's future, before the worker takes any.
    await asyncio.sleep(0)
    assert not any(credit.done() for credit in credits)
    # The close sentinel is queued behind the three credits, so it is met while their batch fills.
    async with asyncio.timeout(10):
        await ledger.close()
        await asyncio.gather(*credits)
    reopened = Ledger(db)
    await reopened.start()
    try:
        assert (await reopened.balance("alice")).balance == 300
    finally:
        await reopened.close()


async def test_a_closed_ledger_refuses_ops_and_cannot_be_started_again(db: Database) -> None:
    ledger = Ledger(db)
    with pytest.raises(RuntimeError) as unstarted:
        await ledger.credit("top-up-early", "alice", 100)
    assert str(unstarted.value) == "Ledger is not running: call start() first"
    await ledger.start()
    await ledger.credit("top-up", "alice", 100)
    await ledger.close()
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError) as refused:
            await ledger.credit("top-up-late", "alice", 100)
        assert str(refused.value) == "Ledger is not running: call start() first"
        with pytest.raises(RuntimeError) as restarted:
            await ledger.start()
        assert str(restarted.value) == "this Ledger was closed; create a new one"
        await ledger.close()


async def test_a_reserve_of_nothing_is_a_hold_of_zero(ledger: Ledger) -> None:
    await ledger.credit("top-up", "alice", 1_000)
    held = await ledger.reserve("call-free", "alice", 0)
    assert (held.status, held.balance) == ("held", Balance(user_id="alice", balance=1_000, held=0, available=1_000))
    settled = await ledger.settle("call-free", "alice", 0)
    assert settled.balance == Balance(user_id="alice", balance=1_000, held=0, available=1_000)


async def _entries_total(db: Database, user_id: str) -> int:
    signs = {"credit": 1, "debit": -1, "charge": -1}
    return sum(signs[row.kind] * row.amount_microcredits for row in await _rows(db, ledger_entries, user_id=user_id))


@pytest.fixture
async def two_ledgers(db: Database) -> AsyncIterator[tuple[Ledger, Ledger]]:
    """Two writers on one database, each with its own account cache."""
    pair = (Ledger(db), Ledger(db))
    for started in pair:
        await started.start()
    yield pair
    for started in pair:
        await started.close()


async def test_two_ledgers_on_one_database_keep_the_balance_equal_to_its_entries(
    two_ledgers: tuple[Ledger, Ledger], db: Database
) -> None:
    first, second = two_ledgers
    await first.credit("top-up-1", "alice", 1_000)
    await second.credit("top-up-2", "alice", 900)
    debited = await first.debit("refund-1", "alice", 100)
    await second.reserve("call-1", "alice", 500)
    settled = await first.settle("call-1", "alice", 300)
    assert debited.balance_after_microcredits == 1_800
    assert settled.balance == Balance(user_id="alice", balance=1_500, held=0, available=1_500)
    assert await first.balance("alice") == Balance(user_id="alice", balance=1_500, held=0, available=1_500)
    assert await _entries_total(db, "alice") == 1_500


async def test_two_ledgers_spending_one_balance_concurrently_admit_exactly_what_it_covers(
    two_ledgers: tuple[Ledger, Ledger], db: Database
) -> None:
    first, second = two_ledgers
    await first.credit("top-up-1", "alice", 20 * PRICE)
    await second.balance("alice")

    async def call(ledger: Ledger, key: str) -> bool:
        try:
            await ledger.reserve(key, "alice", PRICE)
        except DowncityHTTPError as refused:
            assert refused.status == 402
            return False
        await ledger.settle(key, "alice", PRICE)
        return True

    outcomes = await asyncio.gather(*(call(two_ledgers[index % 2], f"call-{index}") for index in range(60)))
    assert outcomes.count(True) == 20
    assert await first.balance("alice") == Balance(user_id="alice", balance=0, held=0, available=0)
    assert await _entries_total(db, "alice") == 0


async def test_a_second_writer_spending_the_balance_makes_the_first_refuse(
    two_ledgers: tuple[Ledger, Ledger], db: Database
) -> None:
    first, second = two_ledgers
    await first.credit("top-up-1", "alice", 1_000)
    await second.debit("spend-1", "alice", 800)
    with pytest.raises(DowncityHTTPError) as refused:
        await first.reserve("call-1", "alice", 500)
    with pytest.raises(DowncityHTTPError) as refused_debit:
        await first.debit("spend-2", "alice", 201)
    assert (refused.value.status, refused_debit.value.status) == (402, 402)
    assert await first.balance("alice") == Balance(user_id="alice", balance=200, held=0, available=200)
    assert await _entries_total(db, "alice") == 200
    assert await _count(db, holds) == 0


async def test_a_credit_whose_commit_ack_was_lost_is_not_erased_by_a_later_debit(
    ledger: Ledger, db: Database, lose_commit_ack: Callable[[], None]
) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    lose_commit_ack()
    with pytest.raises(DowncityHTTPError) as lost:
        await ledger.credit("top-up-2", "alice", 5_000)
    debited = await ledger.debit("refund-1", "alice", 1_000)
    retried = await ledger.credit("top-up-2", "alice", 5_000)
    assert (lost.value.status, lost.value.type) == (503, "ledger_unavailable")
    assert (debited.balance_after_microcredits, retried.balance_after_microcredits) == (14_000, 15_000)
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=14_000, held=0, available=14_000)
    assert await _entries_total(db, "alice") == 14_000


async def test_a_reserve_whose_commit_ack_was_lost_is_not_trusted_as_unseen(
    ledger: Ledger, lose_commit_ack: Callable[[], None]
) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    lose_commit_ack()
    with pytest.raises(DowncityHTTPError):
        await ledger.reserve("call-1", "alice", 3_000)
    settled = await ledger.settle("call-1", "alice", 2_000)
    assert settled.balance == Balance(user_id="alice", balance=8_000, held=0, available=8_000)
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=8_000, held=0, available=8_000)


async def test_sweep_releases_holds_past_their_expiry(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    later = now_ms() + ledger.hold_expiry_s * 1000 + 1
    assert await ledger.sweep_expired_holds(now_ms=now_ms()) == 0
    assert await ledger.sweep_expired_holds(now_ms=later) == 1
    assert await ledger.sweep_expired_holds(now_ms=later) == 0
    [hold] = await _rows(db, holds, idempotency_key="call-1")
    assert hold.status == "released"
    assert (await ledger.balance("alice")).held == 0


async def test_settle_after_the_hold_expired_still_charges(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    await ledger.sweep_expired_holds(now_ms=now_ms() + ledger.hold_expiry_s * 1000 + 1)
    result = await ledger.settle("call-1", "alice", 2_000)
    assert result.balance == Balance(user_id="alice", balance=8_000, held=0, available=8_000)


async def test_background_sweeper_releases_expired_holds(db: Database) -> None:
    ledger = Ledger(db, hold_expiry_s=0, sweep_interval_s=0.02)
    await ledger.start()
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    for _ in range(200):
        if (await ledger.balance("alice")).held == 0:
            break
        await asyncio.sleep(0.02)
    await ledger.close()
    [hold] = await _rows(db, holds, idempotency_key="call-1")
    assert hold.status == "released"


async def _hold(db: Database, key: str) -> Any:
    [row] = await _rows(db, holds, idempotency_key=key)
    return row


async def test_reserve_sets_the_hold_to_expire_one_ttl_from_now(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    row = await _hold(db, "call-1")
    assert row.expires_at_ms - row.created_at_ms == ledger.hold_expiry_s * 1000


async def _age_holds(db: Database, by_ms: int) -> None:
    """Move every hold into the past, as if it had been reserved `by_ms` earlier."""
    statement = holds.update().values(
        created_at_ms=holds.c.created_at_ms - by_ms, expires_at_ms=holds.c.expires_at_ms - by_ms
    )
    async with db.begin() as conn:
        await conn.execute(statement)


async def test_a_renewed_hold_survives_a_sweep_past_its_first_expiry_and_an_unrenewed_one_does_not(
    ledger: Ledger, db: Database
) -> None:
    ttl_ms = ledger.hold_expiry_s * 1000
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.reserve("call-1", "alice", 3_000)
    await ledger.reserve("call-2", "alice", 2_000)
    await _age_holds(db, by_ms=2 * ttl_ms)
    renewed_from = now_ms()
    assert await ledger.renew(["call-1", "unknown-key"], "alice") == ["call-1"]
    renewed_until = now_ms()
    assert await ledger.sweep_expired_holds() == 1
    renewed, unrenewed = await _hold(db, "call-1"), await _hold(db, "call-2")
    assert (renewed.status, unrenewed.status) == ("held", "released")
    assert renewed_from + ttl_ms <= renewed.expires_at_ms <= renewed_until + ttl_ms
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=10_000, held=3_000, available=7_000)


async def test_renew_reports_released_settled_and_foreign_holds_as_not_held(ledger: Ledger) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    await ledger.credit("top-up-2", "bob", 10_000)
    for key, user in [("released", "alice"), ("settled", "alice"), ("live", "alice"), ("bobs", "bob")]:
        await ledger.reserve(key, user, 1_000)
    await ledger.release("released", user_id="alice")
    await ledger.settle("settled", "alice", 500)
    assert await ledger.renew(["released", "settled", "live", "bobs"], "alice") == ["live"]
    assert await ledger.renew(["released"], "alice") == []


async def test_restart_keeps_balances_holds_and_idempotency(db: Database) -> None:
    first = Ledger(db)
    await first.start()
    entry = await first.credit("top-up-1", "alice", 10_000)
    await first.reserve("call-1", "alice", 3_000)
    await first.close()
    second = Ledger(db)
    await second.start()
    assert await second.balance("alice") == Balance(user_id="alice", balance=10_000, held=3_000, available=7_000)
    assert await second.credit("top-up-1", "alice", 10_000) == entry
    settled = await second.settle("call-1", "alice", 2_500)
    await second.close()
    assert settled.balance == Balance(user_id="alice", balance=7_500, held=0, available=7_500)


async def test_a_restarted_ledger_recognises_every_key_its_predecessor_wrote(db: Database) -> None:
    first = Ledger(db)
    await first.start()
    await first.credit("top-up-1", "alice", 10_000)
    await first.reserve("held-1", "alice", 3_000)
    await first.reserve("held-2", "alice", 2_000)
    await first.reserve("charged-1", "alice", 1_000)
    charged = await first.settle("charged-1", "alice", 1_000)
    await first.close()
    second = Ledger(db)
    await second.start()
    # Once the account is cached, ops on keys the new Ledger never saw are decided without a read; these
    # write nothing that clashes with a unique key, so only the write's own check finds the old holds.
    await second.credit("top-up-2", "alice", 1)
    with pytest.raises(DowncityHTTPError) as refused:
        await second.debit("held-1", "alice", 5)
    settled = await second.settle("held-2", "alice", 1_500)
    assert (await second.settle("charged-1", "alice", 1_000)).entry == charged.entry
    released = await second.release("held-1", user_id="alice")
    await second.close()
    assert refused.value.status == 409
    assert settled.balance == Balance(user_id="alice", balance=7_501, held=3_000, available=4_501)
    assert released is not None and released.status == "released"
    assert released.balance == Balance(user_id="alice", balance=7_501, held=0, available=7_501)
    assert await _count(db, ledger_entries) == 4


async def test_sharded_ledger_sends_every_op_of_a_user_to_its_shard(db: Database) -> None:
    shards = [Ledger(db, shard=(index, 2)) for index in range(2)]
    sharded = ShardedLedger(shards)
    await sharded.start()
    users = [f"user-{index}" for index in range(8)]
    for user in users:
        assert sharded.shard_for(user) is shards[shard_of(user, 2)]
        await sharded.credit(f"top-up-{user}", user, 1_000)
        await sharded.reserve(f"call-{user}", user, 400)
        await sharded.release(f"call-{user}", user_id=user)
    with pytest.raises(ValueError, match="another ledger shard"):
        await shards[1 - shard_of("user-0", 2)].credit("stray", "user-0", 5)
    balances = [await sharded.balance(user) for user in users]
    await sharded.close()
    assert {shard_of(user, 2) for user in users} == {0, 1}
    assert [balance.available for balance in balances] == [1_000] * 8


async def test_sharded_release_needs_the_user_to_find_the_shard(db: Database) -> None:
    sharded = ShardedLedger([Ledger(db, shard=(index, 2)) for index in range(2)])
    await sharded.start()
    await sharded.credit("top-up-1", "alice", 1_000)
    await sharded.reserve("call-1", "alice", 400)
    with pytest.raises(DowncityHTTPError) as refused:
        await sharded.release("call-1")
    released = await sharded.release("call-1", usage=_usage("req-1"))
    await sharded.close()
    assert (refused.value.status, refused.value.field) == (422, "user_id")
    assert released is not None
    assert released.status == "released"


async def test_a_settle_warns_only_when_it_charged_less_than_requested(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    await ledger.credit("top-up-1", "alice", 1_000)
    await ledger.reserve("call-1", "alice", 500)
    await ledger.reserve("call-2", "alice", 500)

    with caplog.at_level(logging.WARNING, logger="downcity.ledger.ops"):
        whole = await ledger.settle("call-1", "alice", 300)
        nothing = await ledger.settle("call-3", "alice", 0)
        capped = await ledger.settle("call-2", "alice", 5_000)
        unfunded = await ledger.settle("call-4", "bob", 300)
        await ledger.settle("call-2", "alice", 5_000)

    assert [r.entry.amount_microcredits if r.entry else None for r in (whole, nothing, capped, unfunded)] == [
        300,
        None,
        500,
        None,
    ]
    assert caplog.messages == [
        "settle 'call-2' charged 500 of the 5000 microcredits requested",
        "settle 'call-4' charged 0 of the 300 microcredits requested",
    ]


CONFLICT = "idempotency key 'k' was already used with a different amount, kind or user"
REUSED = "idempotency key 'k': this key was already used by a finished call"
Step = tuple[str, str, int]


@pytest.mark.parametrize(
    ("before", "again", "refusal"),
    [
        ([("reserve", "alice", 500)], ("reserve", "alice", 400), CONFLICT),
        ([("reserve", "alice", 500), ("settle", "alice", 300)], ("reserve", "alice", 500), REUSED),
        ([("settle", "alice", 300)], ("reserve", "alice", 300), REUSED),
        ([("credit", "alice", 300)], ("reserve", "alice", 300), CONFLICT),
        ([("settle", "alice", 300)], ("settle", "alice", 200), CONFLICT),
        ([("reserve", "alice", 500)], ("settle", "bob", 300), CONFLICT),
        ([("settle", "bob", 300)], ("settle", "bob", 200), CONFLICT),
    ],
    ids=[
        "reserve-another-amount",
        "reserve-a-settled-hold",
        "reserve-a-charge",
        "reserve-a-credit",
        "settle-another-amount",
        "settle-another-users-hold",
        "settle-a-marker-another-amount",
    ],
)
async def test_a_key_used_otherwise_is_refused_naming_it(
    ledger: Ledger, before: list[Step], again: Step, refusal: str
) -> None:
    await ledger.credit("top-up-1", "alice", 1_000)
    for method, user_id, amount in before:
        await getattr(ledger, method)("k", user_id, amount)
    balance = await ledger.balance("alice")

    method, user_id, amount = again
    with pytest.raises(DowncityHTTPError) as refused:
        await getattr(ledger, method)("k", user_id, amount)

    kind = "idempotency_key_reused" if refusal == REUSED else "idempotency_conflict"
    assert (refused.value.status, refused.value.type, refused.value.message) == (409, kind, refusal)
    assert await ledger.balance("alice") == balance


async def test_a_settle_cut_to_nothing_accepts_its_replays_without_warning_again(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="downcity.ledger.ops"):
        cut = await ledger.settle("k", "bob", 300)
        replays = [await ledger.settle("k", "bob", 300), await ledger.settle("k", "bob", 0)]

    assert (cut.entry, cut.requested_microcredits) == (None, 300)
    assert [(replay.entry, replay.requested_microcredits) for replay in replays] == [(None, 300), (None, 0)]
    assert caplog.messages == ["settle 'k' charged 0 of the 300 microcredits requested"]


async def test_a_charge_stores_what_was_requested_only_when_it_was_cut(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up-1", "alice", 1_000)
    await ledger.reserve("call-1", "alice", 500)
    await ledger.reserve("call-2", "alice", 500)

    await ledger.settle("call-1", "alice", 1)
    await ledger.settle("call-2", "alice", 800)

    charges = await _rows(db, ledger_entries, kind="charge")
    assert sorted((row.idempotency_key, row.amount_microcredits, row.requested_microcredits) for row in charges) == [
        ("call-1", 1, None),
        ("call-2", 500, 800),
    ]
