"""Credit leases on SQLite and PostgreSQL: the Ledger's grants, lease settles, recalls and expiry, and `LeaseBook`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from downcity.calls.admission import reserve
from downcity.errors import DowncityHTTPError
from downcity.ledger import Balance, Ledger
from downcity.ledger.leases import LeaseBook, LeasePolicy, SpendMeter, Ticket, lease_size
from downcity.store import Database
from downcity.store.database import now_ms
from downcity.store.schema import holds, ledger_entries

PRICE = 500
POLICY = LeasePolicy(enabled=True, window_s=2.0, min_calls=4, idle_s=0.2, recall_wait_s=5.0, ttl_s=120)


@pytest.fixture
async def ledger(db: Database) -> AsyncIterator[Ledger]:
    started = Ledger(db)
    await started.start()
    yield started
    await started.close()


async def _hold(db: Database, key: str) -> Any:
    async with db.connect() as conn:
        return (await conn.execute(select(holds).where(holds.c.idempotency_key == key))).one_or_none()


async def _charges(db: Database, user_id: str) -> list[int]:
    query = select(ledger_entries.c.amount_microcredits).where(
        ledger_entries.c.user_id == user_id, ledger_entries.c.kind == "charge"
    )
    async with db.connect() as conn:
        return [row[0] for row in await conn.execute(query)]


def test_a_lease_asks_for_its_window_of_recent_spend_and_at_least_its_minimum_calls() -> None:
    assert lease_size(0.0, PRICE, POLICY) == 4 * PRICE
    assert lease_size(10_000.0, PRICE, POLICY) == 20_000


def test_the_spend_meter_forgets_what_left_its_window() -> None:
    meter = SpendMeter(2.0)
    meter.add(0.0, 1_000)
    meter.add(1.5, 3_000)
    assert meter.rate(1.5) == 2_000.0
    assert meter.rate(3.0) == 1_500.0


async def test_a_grant_is_capped_at_the_fraction_of_the_available_balance(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up", "alice", 10_000)
    lease = await ledger.lease("lease:r1:0", "alice", "r1", 8_000, 1_000)
    assert (lease.granted_microcredits, lease.amount_microcredits, lease.status) == (5_000, 5_000, "held")
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=10_000, held=5_000, available=5_000)
    row = await _hold(db, "lease:r1:0")
    assert (row.owner, row.amount_microcredits, row.status) == ("r1", 5_000, "held")


async def test_a_grant_below_its_minimum_writes_nothing(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up", "alice", 1_000)
    lease = await ledger.lease("lease:r1:0", "alice", "r1", 4 * PRICE, 4 * PRICE)
    assert (lease.granted_microcredits, lease.amount_microcredits, lease.status) == (0, 0, "released")
    assert await _hold(db, "lease:r1:0") is None
    assert (await ledger.balance("alice")).held == 0


async def test_a_top_up_grows_the_lease(ledger: Ledger) -> None:
    await ledger.credit("top-up", "alice", 10_000)
    await ledger.lease("lease:r1:0", "alice", "r1", 2_000, 500)
    grown = await ledger.lease("lease:r1:0", "alice", "r1", 1_000, 500)
    assert (grown.granted_microcredits, grown.amount_microcredits) == (1_000, 3_000)
    assert (await ledger.balance("alice")).held == 3_000


async def test_a_settle_on_a_lease_takes_the_charge_out_of_it_once(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up", "alice", 10_000)
    await ledger.lease("lease:r1:0", "alice", "r1", 4_000, 500)
    first = await ledger.settle("call:1", "alice", 300, lease="lease:r1:0", lease_hold=PRICE)
    again = await ledger.settle("call:1", "alice", 300, lease="lease:r1:0", lease_hold=PRICE)
    assert first.entry is not None and again.entry is not None
    assert (first.entry.amount_microcredits, again.entry.id) == (300, first.entry.id)
    assert (first.lease_recalled, (await _hold(db, "lease:r1:0")).amount_microcredits) == (False, 3_700)
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=9_700, held=3_700, available=6_000)
    assert await _charges(db, "alice") == [300]


async def test_a_settle_on_a_lease_is_capped_by_the_calls_share(ledger: Ledger) -> None:
    await ledger.credit("top-up", "alice", 10_000)
    await ledger.lease("lease:r1:0", "alice", "r1", 4_000, 500)
    settled = await ledger.settle("call:1", "alice", 900, lease="lease:r1:0", lease_hold=PRICE)
    assert settled.entry is not None
    assert (settled.entry.amount_microcredits, settled.requested_microcredits) == (PRICE, 900)


async def test_a_returned_lease_frees_what_it_did_not_spend(ledger: Ledger) -> None:
    await ledger.credit("top-up", "alice", 10_000)
    await ledger.lease("lease:r1:0", "alice", "r1", 4_000, 500)
    await ledger.settle("call:1", "alice", PRICE, lease="lease:r1:0", lease_hold=PRICE)
    returned = await ledger.release("lease:r1:0", user_id="alice")
    assert returned is not None and returned.status == "released"
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=9_500, held=0, available=9_500)


async def test_an_expired_lease_is_swept_and_its_settled_charges_stand(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up", "alice", 10_000)
    await ledger.lease("lease:dead:0", "alice", "dead", 4_000, 500)
    await ledger.settle("call:1", "alice", PRICE, lease="lease:dead:0", lease_hold=PRICE)
    assert await ledger.sweep_expired_holds(now_ms() + 121_000) == 1
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=9_500, held=0, available=9_500)
    late = await ledger.settle("call:2", "alice", PRICE, lease="lease:dead:0", lease_hold=PRICE)
    assert late.lease_recalled and late.entry is not None and late.entry.amount_microcredits == PRICE
    assert await _charges(db, "alice") == [PRICE, PRICE]


async def test_a_settle_on_a_gone_lease_never_overdraws(ledger: Ledger) -> None:
    await ledger.credit("top-up", "alice", 10_000)
    await ledger.lease("lease:r1:0", "alice", "r1", 4_000, 500)
    await ledger.release("lease:r1:0", user_id="alice")
    await ledger.debit("spend", "alice", 9_800)
    late = await ledger.settle("call:1", "alice", PRICE, lease="lease:r1:0", lease_hold=PRICE)
    assert late.entry is not None and late.entry.amount_microcredits == 200
    assert (await ledger.balance("alice")).available == 0


async def test_a_reserve_refused_while_credit_is_leased_recalls_the_lease(ledger: Ledger) -> None:
    await ledger.credit("top-up", "alice", 2_000)
    await ledger.lease("lease:r1:0", "alice", "r1", 1_000, 500)
    await ledger.reserve("call:a", "alice", 1_000)
    with pytest.raises(DowncityHTTPError) as refused:
        await ledger.reserve("call:b", "alice", PRICE)
    assert (refused.value.status, refused.value.type, refused.value.message) == (
        402,
        "credit_leased",
        f"available balance is below the reservation of {PRICE} microcredits; leases recalled",
    )
    settled = await ledger.settle("call:c", "alice", PRICE, lease="lease:r1:0", lease_hold=PRICE)
    assert settled.lease_recalled
    blocked = await ledger.lease("lease:r2:0", "alice", "r2", 500, 500)
    assert blocked.granted_microcredits == 0
    await ledger.release("lease:r1:0", user_id="alice")
    await ledger.release("call:a", user_id="alice")
    with pytest.raises(DowncityHTTPError) as short:
        await ledger.reserve("call:d", "alice", 2_000)
    assert short.value.type == "insufficient_balance"


async def test_a_restarted_ledger_still_recalls_the_leases_it_did_not_grant(db: Database) -> None:
    first = Ledger(db)
    await first.start()
    await first.credit("top-up", "alice", 1_000)
    await first.lease("lease:r1:0", "alice", "r1", 500, 500)
    await first.close()
    second = Ledger(db)
    await second.start()
    try:
        with pytest.raises(DowncityHTTPError) as refused:
            await second.reserve("call:a", "alice", 1_000)
        assert refused.value.type == "credit_leased"
    finally:
        await second.close()


async def test_a_lease_book_admits_in_memory_after_one_grant(ledger: Ledger) -> None:
    await ledger.credit("top-up", "alice", 100_000)
    book = LeaseBook(ledger, "r1", POLICY)
    tickets = [await book.admit("alice", PRICE) for _ in range(4)]
    assert all(isinstance(ticket, Ticket) for ticket in tickets)
    assert len({ticket.lease for ticket in tickets if ticket is not None}) == 1
    assert book.leases["alice"].in_flight == 4 * PRICE
    await book.close()


async def test_a_lease_book_falls_back_to_per_call_holds_at_a_low_balance(ledger: Ledger) -> None:
    await ledger.credit("top-up", "alice", 3 * PRICE)
    book = LeaseBook(ledger, "r1", POLICY)
    assert await book.admit("alice", PRICE) is None
    assert book.leases == {}
    assert (await ledger.balance("alice")).held == 0
    await book.close()


async def test_an_idle_lease_is_returned(ledger: Ledger) -> None:
    await ledger.credit("top-up", "alice", 100_000)
    clock = [0.0]
    book = LeaseBook(ledger, "r1", POLICY, clock=lambda: clock[0])
    ticket = await book.admit("alice", PRICE)
    assert ticket is not None
    settled = await ledger.settle("call:1", "alice", PRICE, lease=ticket.lease, lease_hold=ticket.amount)
    book.settled(ticket, settled)
    clock[0] = POLICY.idle_s
    await book.tick()
    await book.close()
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=99_500, held=0, available=99_500)


async def _call(book: LeaseBook, ledger: Ledger, index: int) -> bool:
    """Admit a flat-priced call on the book's lease or its own hold, then settle it: False when refused."""
    key = f"call:{book.owner}:{index}"
    ticket = await book.admit("alice", PRICE)
    if ticket is None:
        try:
            await reserve(ledger, key, "alice", PRICE, POLICY.recall_wait_s)
        except DowncityHTTPError as refused:
            assert refused.type == "insufficient_balance"
            return False
        await ledger.settle(key, "alice", PRICE)
        return True
    await asyncio.sleep(0)
    book.settled(ticket, await ledger.settle(key, "alice", PRICE, lease=ticket.lease, lease_hold=ticket.amount))
    return True


async def test_two_replicas_sell_exactly_the_credit_there_is(ledger: Ledger, db: Database) -> None:
    await ledger.credit("top-up", "alice", 57 * PRICE)
    books = [LeaseBook(ledger, "r1", POLICY), LeaseBook(ledger, "r2", POLICY)]
    for book in books:
        book.start()
    results = await asyncio.gather(*(_call(books[index % 2], ledger, index) for index in range(200)))
    for book in books:
        await book.close()
    assert results.count(True) == 57
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=0, held=0, available=0)
    assert sum(await _charges(db, "alice")) == 57 * PRICE
    async with db.connect() as conn:
        leases = (await conn.execute(select(holds.c.owner, holds.c.status).where(holds.c.owner.is_not(None)))).all()
    assert {owner for owner, _ in leases} == {"r1", "r2"}
    assert {status for _, status in leases} == {"released"}


class LeaseGauges:
    """The `leases_state` reports a `LeaseBook` makes, in order."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, int, int]] = []

    def leases_state(self, *, held: int, leased_microcredits: int, in_flight_microcredits: int) -> None:
        self.reports.append((held, leased_microcredits, in_flight_microcredits))


async def test_each_upkeep_round_reports_the_leases_their_credit_and_what_calls_in_flight_may_spend(
    ledger: Ledger,
) -> None:
    await ledger.credit("top-up", "alice", 100_000)
    gauges = LeaseGauges()
    clock = [0.0]
    book = LeaseBook(ledger, "r1", POLICY, clock=lambda: clock[0], metrics=gauges)  # type: ignore[arg-type]
    first, second = await book.admit("alice", PRICE), await book.admit("alice", PRICE)
    assert first is not None and second is not None
    leased = book.leases["alice"].amount
    await book.tick()
    book.settled(first, await ledger.settle("call:1", "alice", 300, lease=first.lease, lease_hold=first.amount))
    await book.tick()
    book.released(second)
    clock[0] = POLICY.idle_s
    await book.tick()
    await book.close()
    assert gauges.reports == [(1, leased, 2 * PRICE), (1, leased - 300, PRICE), (0, 0, 0)]
