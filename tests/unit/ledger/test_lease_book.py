"""`LeaseBook` on its own: what it asks the Ledger, when, and what it believes after each answer.

The Ledger is a scripted stand-in here (the real one is in test_leases.py, on both databases), and the book's clock
is a number the test moves, so each rule is checked at its exact bound.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from downcity.ledger.leases import Lease, LeaseBook, LeasePolicy, SpendMeter, Ticket, lease_size
from downcity.ledger.types import Balance, LeaseResult, LedgerEntry, SettleResult
from downcity.settings import Settings

HOLD = 500
POLICY = LeasePolicy(enabled=True, window_s=2.0, min_calls=4, idle_s=10.0, recall_wait_s=5.0, ttl_s=120.0)
START = 1_000.0
NO_BALANCE = Balance(user_id="alice", balance=0, held=0, available=0)


@dataclass
class ScriptedLedger:
    """Answers `lease`, `renew` and `release` as the test scripts them, and keeps every call."""

    grant: int | None = None  # grant at most this much (None: all that is asked)
    status: str = "held"
    fail: dict[str, Exception] = field(default_factory=dict)  # method name -> error to raise
    unheld: set[str] = field(default_factory=set)  # lease keys `renew` no longer finds held
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event | None = None  # when set, `lease` waits for it

    async def lease(self, key: str, user_id: str, owner: str, amount: int, minimum: int) -> LeaseResult:
        self.calls.append(("lease", key, user_id, owner, amount, minimum))
        if self.gate is not None:
            await self.gate.wait()
        if "lease" in self.fail:
            raise self.fail["lease"]
        granted = amount if self.grant is None else min(amount, self.grant)
        granted = granted if granted >= minimum else 0
        return LeaseResult(
            idempotency_key=key,
            user_id=user_id,
            granted_microcredits=granted,
            amount_microcredits=granted,
            status=self.status,  # type: ignore[arg-type]
            expires_at_ms=None,
            balance=NO_BALANCE,
        )

    async def renew(self, keys: list[str], user_id: str) -> list[str]:
        self.calls.append(("renew", keys, user_id))
        if "renew" in self.fail:
            raise self.fail["renew"]
        return [key for key in keys if key not in self.unheld]

    async def release(self, key: str, *, user_id: str | None = None) -> None:
        self.calls.append(("release", key, user_id))
        self.released.set()
        if "release" in self.fail:
            raise self.fail["release"]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def book_of(ledger: ScriptedLedger, clock: Clock, policy: LeasePolicy = POLICY) -> LeaseBook:
    return LeaseBook(ledger, "r1", policy, clock=clock)  # type: ignore[arg-type]


def settled(charge: int, *, recalled: bool = False) -> SettleResult:
    entry = None
    if charge:
        entry = LedgerEntry(
            id=1,
            idempotency_key="call:1",
            user_id="alice",
            kind="charge",
            amount_microcredits=charge,
            balance_after_microcredits=0,
            ref=None,
            note=None,
            metadata=None,
            created_at_ms=0,
        )
    return SettleResult(entry=entry, requested_microcredits=charge, balance=NO_BALANCE, lease_recalled=recalled)


async def settle_returns(book: LeaseBook) -> None:
    """Let the return tasks the book spawned run to their end."""
    await asyncio.gather(*book._returning)


@pytest.fixture
def ledger() -> ScriptedLedger:
    return ScriptedLedger()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_the_first_call_asks_for_min_calls_holds_under_a_key_of_the_owner(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    book = book_of(ledger, clock)
    ticket = await book.admit("alice", HOLD)
    assert ticket == Ticket("lease:r1:0", "alice", HOLD)
    assert ledger.calls == [("lease", "lease:r1:0", "alice", "r1", 4 * HOLD, 4 * HOLD)]
    lease = book.leases["alice"]
    assert (lease.amount, lease.in_flight, lease.free, lease.last_used) == (4 * HOLD, HOLD, 3 * HOLD, START)
    # Usable for two thirds of the TTL from the ask, renewed after a third.
    assert (lease.usable_until, lease.renew_at) == (START + 80.0, START + 40.0)
    assert book._acquiring == {}


async def test_calls_in_a_burst_share_one_grant(ledger: ScriptedLedger, clock: Clock) -> None:
    ledger.gate = asyncio.Event()
    book = book_of(ledger, clock)
    waiting = [asyncio.create_task(book.admit("alice", HOLD)) for _ in range(3)]
    await asyncio.sleep(0)
    ledger.gate.set()
    tickets = await asyncio.gather(*waiting)
    assert [ticket.lease if ticket else None for ticket in tickets] == ["lease:r1:0"] * 3
    # One grant of max(4 holds, the burst's 3 holds); the third call left less than half of it free: a top-up.
    assert ledger.calls == [
        ("lease", "lease:r1:0", "alice", "r1", 4 * HOLD, 4 * HOLD),
        ("lease", "lease:r1:0", "alice", "r1", 3 * HOLD, HOLD),
    ]
    assert book._acquiring == {}


async def test_a_grant_below_the_minimum_leaves_the_account_to_per_call_holds_for_an_idle_time(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    ledger.grant = 3 * HOLD
    book = book_of(ledger, clock)
    assert await book.admit("alice", HOLD) is None
    assert book._denied_until == {"alice": START + POLICY.idle_s}
    clock.now = START + POLICY.idle_s - 0.001
    assert await book.admit("alice", HOLD) is None
    assert len(ledger.calls) == 1
    clock.now = START + POLICY.idle_s
    ledger.grant = None
    ticket = await book.admit("alice", HOLD)
    assert ticket is not None and ticket.lease == "lease:r1:1"
    assert len(ledger.calls) == 2


async def test_a_failed_grant_is_logged_and_the_call_takes_its_own_hold(
    ledger: ScriptedLedger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    ledger.fail["lease"] = RuntimeError("ledger down")
    book = book_of(ledger, clock)
    with caplog.at_level(logging.WARNING, logger="downcity.ledger.leases"):
        assert await book.admit("alice", HOLD) is None
    assert caplog.messages == ["lease for 'alice' not granted: RuntimeError('ledger down')"]
    assert (book.leases, book._denied_until) == ({}, {"alice": START + POLICY.idle_s})


async def test_a_lease_admits_until_its_free_credit_is_below_the_hold_then_goes_back(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    book = book_of(ledger, clock)
    tickets = [await book.admit("alice", HOLD)]
    ledger.grant = 0
    tickets += [await book.admit("alice", HOLD) for _ in range(3)]
    assert all(ticket is not None for ticket in tickets)
    lease = book.leases["alice"]
    assert (lease.free, lease.in_flight) == (0, 4 * HOLD)
    for ticket in tickets:
        assert ticket is not None
        book.settled(ticket, settled(HOLD))
    # Spent to the last microcredit with nothing in flight: handed back at once.
    assert "alice" not in book.leases
    await settle_returns(book)
    assert ledger.calls[-1] == ("release", "lease:r1:0", "alice")
    assert lease.amount == 0


async def test_a_call_bigger_than_what_is_free_returns_an_unused_lease_and_asks_for_a_new_one(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    book = book_of(ledger, clock)
    first = await book.admit("alice", HOLD)
    assert first is not None
    book.released(first)
    ticket = await book.admit("alice", 10 * HOLD)
    await settle_returns(book)
    assert ticket == Ticket("lease:r1:1", "alice", 10 * HOLD)
    assert [call[:2] for call in ledger.calls] == [
        ("lease", "lease:r1:0"),
        ("release", "lease:r1:0"),
        ("lease", "lease:r1:1"),
    ]


async def test_a_call_bigger_than_what_is_free_keeps_a_lease_other_calls_are_using(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    ledger.grant = 4 * HOLD
    book = book_of(ledger, clock)
    first = await book.admit("alice", HOLD)
    assert first is not None
    # It takes its own hold: no second lease while calls are in flight on this one.
    assert await book.admit("alice", 4 * HOLD) is None
    assert book.leases["alice"].in_flight == HOLD
    assert [call[0] for call in ledger.calls] == ["lease"]


async def test_a_lease_is_topped_up_once_less_than_half_its_target_is_free(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    book = book_of(ledger, clock)
    await book.admit("alice", HOLD)
    await book.admit("alice", HOLD)
    lease = book.leases["alice"]
    # Free 1,000 of a 2,000 target: not yet below half.
    assert (lease.free, lease.top_up) == (2 * HOLD, None)
    clock.now = START + 5.0
    await book.admit("alice", HOLD)
    assert lease.top_up is not None
    await lease.top_up
    # Asked for the target (max(4 holds, the window's 3 holds)) less what was free, the hold as the minimum.
    assert ledger.calls[-1] == ("lease", "lease:r1:0", "alice", "r1", 4 * HOLD - HOLD, HOLD)
    assert (lease.amount, lease.usable_until, lease.renew_at) == (7 * HOLD, START + 85.0, START + 45.0)


async def test_a_top_up_that_grants_nothing_leaves_the_expiry_as_it_was(ledger: ScriptedLedger, clock: Clock) -> None:
    book = book_of(ledger, clock)
    for _ in range(2):
        await book.admit("alice", HOLD)
    ledger.grant = 0
    clock.now = START + 5.0
    await book.admit("alice", HOLD)
    lease = book.leases["alice"]
    assert lease.top_up is not None
    await lease.top_up
    assert (lease.amount, lease.usable_until, lease.draining) == (4 * HOLD, START + 80.0, False)


async def test_a_top_up_the_ledger_refuses_drains_the_lease(ledger: ScriptedLedger, clock: Clock) -> None:
    book = book_of(ledger, clock)
    for _ in range(2):
        await book.admit("alice", HOLD)
    ledger.status = "released"
    await book.admit("alice", HOLD)
    lease = book.leases["alice"]
    assert lease.top_up is not None
    await lease.top_up
    assert (lease.draining, lease.amount) == (True, 4 * HOLD)
    assert await book.admit("alice", HOLD) is None


async def test_a_failed_top_up_is_logged_and_the_lease_stays(
    ledger: ScriptedLedger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    book = book_of(ledger, clock)
    for _ in range(2):
        await book.admit("alice", HOLD)
    ledger.fail["lease"] = RuntimeError("timeout")
    with caplog.at_level(logging.WARNING, logger="downcity.ledger.leases"):
        await book.admit("alice", HOLD)
        lease = book.leases["alice"]
        assert lease.top_up is not None
        await lease.top_up
    assert caplog.messages == ["top-up of lease 'lease:r1:0' failed: RuntimeError('timeout')"]
    assert (lease.draining, lease.amount) == (False, 4 * HOLD)


async def test_a_settle_takes_the_charge_out_of_the_lease_and_frees_the_calls_share(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    book = book_of(ledger, clock)
    first, second = await book.admit("alice", HOLD), await book.admit("alice", HOLD)
    assert first is not None and second is not None
    book.settled(first, settled(300))
    book.settled(second, settled(0))
    lease = book.leases["alice"]
    assert (lease.amount, lease.in_flight, lease.draining) == (4 * HOLD - 300, 0, False)


async def test_a_settle_that_says_the_lease_was_recalled_drains_and_returns_it(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    book = book_of(ledger, clock)
    ticket = await book.admit("alice", HOLD)
    assert ticket is not None
    lease = book.leases["alice"]
    book.settled(ticket, settled(HOLD, recalled=True))
    await settle_returns(book)
    assert (lease.draining, book.leases) == (True, {})
    assert ledger.calls[-1] == ("release", "lease:r1:0", "alice")


async def test_a_ticket_of_a_lease_already_replaced_changes_nothing(ledger: ScriptedLedger, clock: Clock) -> None:
    book = book_of(ledger, clock)
    await book.admit("alice", HOLD)
    current = book.leases["alice"]
    stale = Ticket("lease:r1:99", "alice", HOLD)
    book.settled(stale, settled(HOLD))
    book.released(stale)
    book.released(Ticket("lease:r1:0", "bob", HOLD))
    assert (current.amount, current.in_flight) == (4 * HOLD, HOLD)


async def test_a_released_call_frees_its_share_and_a_draining_lease_then_goes_back(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    book = book_of(ledger, clock)
    ticket = await book.admit("alice", HOLD)
    assert ticket is not None
    lease = book.leases["alice"]
    lease.draining = True
    book.released(ticket)
    await settle_returns(book)
    assert (lease.in_flight, book.leases, ledger.calls[-1]) == (0, {}, ("release", "lease:r1:0", "alice"))


async def test_a_lease_with_one_microcredit_free_and_no_call_in_flight_is_kept(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    book = book_of(ledger, clock)
    ticket = await book.admit("alice", HOLD)
    assert ticket is not None
    book.settled(ticket, settled(4 * HOLD - 1))
    assert book.leases["alice"].free == 1


async def test_upkeep_returns_a_lease_idle_for_the_idle_time_and_renews_one_due(
    ledger: ScriptedLedger, clock: Clock
) -> None:
    book = book_of(ledger, clock)
    for user in ("alice", "bob"):
        ticket = await book.admit(user, HOLD)
        assert ticket is not None
        book.settled(ticket, settled(HOLD))
    clock.now = START + POLICY.idle_s - 0.001
    book.leases["bob"].last_used = START + 5.0
    await book.tick()
    assert sorted(book.leases) == ["alice", "bob"]
    clock.now = START + POLICY.idle_s
    await book.tick()
    await settle_returns(book)
    assert sorted(book.leases) == ["bob"]
    assert ledger.calls[-1] == ("release", "lease:r1:0", "alice")
    bob = book.leases["bob"]
    bob.renew_at = clock.now
    await book.tick()
    assert ledger.calls[-1] == ("renew", ["lease:r1:1"], "bob")
    assert (bob.usable_until, bob.renew_at) == (clock.now + 80.0, clock.now + 40.0)


async def test_a_lease_the_ledger_no_longer_holds_is_drained_on_renewal(ledger: ScriptedLedger, clock: Clock) -> None:
    book = book_of(ledger, clock)
    await book.admit("alice", HOLD)
    lease = book.leases["alice"]
    ledger.unheld.add(lease.key)
    clock.now = lease.renew_at
    await book.tick()
    assert (lease.draining, lease.usable_until) == (True, START + 80.0)


async def test_a_failed_renewal_is_logged_and_the_lease_kept_until_its_confirmed_end(
    ledger: ScriptedLedger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    book = book_of(ledger, clock)
    await book.admit("alice", HOLD)
    lease = book.leases["alice"]
    ledger.fail["renew"] = RuntimeError("busy")
    clock.now = lease.renew_at
    with caplog.at_level(logging.WARNING, logger="downcity.ledger.leases"):
        await book.tick()
    assert caplog.messages == ["renewing lease 'lease:r1:0' failed: RuntimeError('busy')"]
    assert (lease.draining, lease.usable_until, book.leases["alice"]) == (False, START + 80.0, lease)
    clock.now = START + 80.0
    assert not lease.usable(clock.now)
    assert lease.usable(clock.now - 0.001)


async def test_a_failed_return_is_logged_and_left_to_expire(
    ledger: ScriptedLedger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    book = book_of(ledger, clock)
    await book.admit("alice", HOLD)
    ledger.fail["release"] = RuntimeError("gone")
    with caplog.at_level(logging.WARNING, logger="downcity.ledger.leases"):
        await book.close()
    assert caplog.messages == ["returning lease 'lease:r1:0' failed (RuntimeError('gone')); it expires instead"]
    assert (book.leases, book._returning) == ({}, set())


async def test_the_upkeep_loop_runs_once_started_and_stops_on_close(ledger: ScriptedLedger) -> None:
    policy = LeasePolicy(enabled=True, window_s=2.0, min_calls=4, idle_s=0.1, recall_wait_s=5.0, ttl_s=120.0)
    book = LeaseBook(ledger, "r1", policy)  # type: ignore[arg-type]
    book.start()
    loop = book._loop
    book.start()
    assert loop is not None and book._loop is loop
    ticket = await book.admit("alice", HOLD)
    assert ticket is not None
    book.released(ticket)
    # Idle for 0.1 s: the loop (every 0.05 s) hands it back without being asked.
    await asyncio.wait_for(ledger.released.wait(), 30)
    assert ledger.calls[-1] == ("release", "lease:r1:0", "alice")
    await book.close()
    assert (book._loop, loop.cancelled()) == (None, True)


async def test_an_upkeep_round_that_fails_is_logged_and_the_loop_goes_on(
    ledger: ScriptedLedger, caplog: pytest.LogCaptureFixture
) -> None:
    policy = LeasePolicy(enabled=True, window_s=2.0, min_calls=4, idle_s=0.1, recall_wait_s=5.0, ttl_s=120.0)
    rounds: list[int] = []
    second_round = asyncio.Event()
    book = LeaseBook(ledger, "r1", policy)  # type: ignore[arg-type]

    async def failing_tick() -> None:
        rounds.append(len(caplog.records))
        if len(rounds) == 2:
            second_round.set()
        raise RuntimeError("upkeep")

    book.tick = failing_tick  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="downcity.ledger.leases"):
        book.start()
        await asyncio.wait_for(second_round.wait(), 30)
    await book.close()
    # The second round came after the first one's failure was logged.
    assert rounds[:2] == [0, 1]
    assert caplog.messages[0] == "lease upkeep failed"


@pytest.mark.parametrize(
    ("idle_s", "ttl_s", "upkeep_s"), [(10.0, 120.0, 5.0), (60.0, 120.0, 20.0), (0.02, 120.0, 0.05), (1.0, 3.0, 0.5)]
)
def test_upkeep_runs_twice_per_idle_time_six_times_per_ttl_and_at_most_twenty_times_a_second(
    idle_s: float, ttl_s: float, upkeep_s: float
) -> None:
    policy = LeasePolicy(enabled=True, window_s=2.0, min_calls=4, idle_s=idle_s, recall_wait_s=5.0, ttl_s=ttl_s)
    assert policy.upkeep_s == upkeep_s


def test_a_spend_meter_keeps_what_is_inside_its_window_to_the_bound() -> None:
    meter = SpendMeter(2.0)
    meter.add(10.0, 100)
    meter.add(11.0, 300)
    assert meter.rate(12.0) == 200.0
    assert meter.rate(12.5) == 150.0
    assert SpendMeter(0.0).rate(1.0) == 0.0


def test_a_lease_asks_for_the_window_of_spend_rounded_up() -> None:
    assert lease_size(1000.4, HOLD, POLICY) == 2001
    assert lease_size(0.0, HOLD, POLICY) == 4 * HOLD


def test_a_draining_lease_admits_nothing() -> None:
    lease = Lease("lease:r1:0", "alice", 4 * HOLD, usable_until=START + 80, last_used=START)
    assert lease.usable(START)
    lease.draining = True
    assert not lease.usable(START)


async def test_the_books_background_tasks_carry_names_a_task_dump_shows(ledger: ScriptedLedger, clock: Clock) -> None:
    ledger.gate = asyncio.Event()
    book = book_of(ledger, clock)
    book.start()
    admitting = asyncio.create_task(book.admit("alice", HOLD))
    await asyncio.sleep(0)
    names = {task.get_name() for task in asyncio.all_tasks()}
    ledger.gate.set()
    await admitting
    for _ in range(2):
        await book.admit("alice", HOLD)
    lease = book.leases["alice"]
    assert lease.top_up is not None
    top_up = lease.top_up.get_name()
    await lease.top_up
    book._spawn_return(lease)
    [returning] = book._returning
    assert ({"lease-book", "lease-acquire"} <= names, top_up, returning.get_name()) == (
        True,
        "lease-top-up",
        "lease-return",
    )
    await book.close()


@pytest.mark.parametrize(
    ("min_calls", "takes", "topped_up"), [(3, 1, False), (3, 2, False), (6, 3, False), (6, 4, True)]
)
async def test_a_top_up_starts_only_once_the_free_credit_is_below_half_the_target_rounded_down(
    ledger: ScriptedLedger, clock: Clock, min_calls: int, takes: int, topped_up: bool
) -> None:
    # One-microcredit calls: a target of min_calls; with 3, half of it is 1 (free 1 is not below it); with 6,
    # half is 3, reached at the fourth call (free 2) and not before.
    policy = LeasePolicy(enabled=True, window_s=2.0, min_calls=min_calls, idle_s=10.0, recall_wait_s=5.0, ttl_s=120.0)
    ledger.grant = min_calls
    book = book_of(ledger, clock, policy)
    for _ in range(takes):
        assert await book.admit("alice", 1) is not None
    assert (book.leases["alice"].top_up is not None) == topped_up


async def test_a_top_up_of_one_microcredit_renews_the_lease(ledger: ScriptedLedger, clock: Clock) -> None:
    policy = LeasePolicy(enabled=True, window_s=2.0, min_calls=4, idle_s=10.0, recall_wait_s=5.0, ttl_s=120.0)
    book = book_of(ledger, clock, policy)
    for _ in range(2):
        await book.admit("alice", 1)
    ledger.grant = 1
    clock.now = START + 5.0
    await book.admit("alice", 1)
    lease = book.leases["alice"]
    assert lease.top_up is not None
    await lease.top_up
    assert (lease.amount, lease.usable_until) == (5, START + 85.0)


@pytest.mark.parametrize(
    ("window_s", "min_calls", "enabled"), [(0.0, 4, False), (1.0, 4, True), (2.0, 0, False), (2.0, 1, True)]
)
def test_leases_are_on_only_with_a_window_and_a_minimum_of_calls(
    window_s: float, min_calls: int, enabled: bool
) -> None:
    settings = Settings(leases=True, lease_window_s=window_s, lease_min_calls=min_calls, lease_recall_wait_s=7.5)
    policy = LeasePolicy.from_settings(settings)
    assert (policy.enabled, policy.recall_wait_s) == (enabled, 7.5)


def test_a_spend_meter_shorter_than_a_second_still_has_a_rate() -> None:
    meter = SpendMeter(0.5)
    meter.add(1.0, 100)
    assert meter.rate(1.0) == 200.0
