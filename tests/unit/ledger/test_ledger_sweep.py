"""The hold sweep at its edges: strictly past the expiry, held holds only, every shard its own users."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, update

from downcity.ledger import Balance, Ledger, ShardedLedger, shard_of
from downcity.ledger.ops import Account, BatchState, HoldRow, Op, decide
from downcity.store import Database
from downcity.store.schema import holds

EXPIRY_MS = 1_900_000_000_000


@pytest.fixture
async def ledger(db: Database) -> AsyncIterator[Ledger]:
    started = Ledger(db)
    await started.start()
    yield started
    await started.close()


async def _expire_at(db: Database, expires_at_ms: int, *keys: str) -> None:
    async with db.connect() as conn:
        await conn.execute(update(holds).where(holds.c.idempotency_key.in_(keys)).values(expires_at_ms=expires_at_ms))
        await conn.commit()


async def _statuses(db: Database) -> dict[str, str]:
    async with db.connect() as conn:
        return {row.idempotency_key: row.status for row in await conn.execute(select(holds))}


async def test_the_sweep_releases_every_held_hold_strictly_past_its_expiry_and_counts_them(
    ledger: Ledger, db: Database
) -> None:
    await ledger.credit("top-up-1", "alice", 10_000)
    for key, amount in (("call-1", 1_000), ("call-2", 2_000), ("call-3", 3_000), ("call-4", 400)):
        await ledger.reserve(key, "alice", amount)
    await ledger.settle("call-4", "alice", 400)
    await _expire_at(db, EXPIRY_MS, "call-1", "call-2", "call-4")
    await _expire_at(db, EXPIRY_MS + 60_000, "call-3")

    at_expiry = await ledger.sweep_expired_holds(now_ms=EXPIRY_MS)
    past_expiry = await ledger.sweep_expired_holds(now_ms=EXPIRY_MS + 1)

    assert (at_expiry, past_expiry) == (0, 2)
    assert await _statuses(db) == {"call-1": "released", "call-2": "released", "call-3": "held", "call-4": "settled"}
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=9_600, held=3_000, available=6_600)


async def test_each_shard_sweeps_the_expired_holds_of_its_own_users(db: Database) -> None:
    users = [f"user-{index}" for index in range(6)]
    assert {shard_of(user, 2) for user in users} == {0, 1}
    sharded = ShardedLedger([Ledger(db, shard=(index, 2)) for index in range(2)])
    await sharded.start()
    for user in users:
        await sharded.credit(f"top-up-{user}", user, 1_000)
        await sharded.reserve(f"call-{user}", user, 100)
    await _expire_at(db, EXPIRY_MS, *(f"call-{user}" for user in users))

    released = [await shard.sweep_expired_holds(now_ms=EXPIRY_MS + 1) for shard in sharded.shards]
    again = [await shard.sweep_expired_holds(now_ms=EXPIRY_MS + 1) for shard in sharded.shards]
    balances = [await sharded.balance(user) for user in users]
    await sharded.close()

    assert released == [sum(1 for user in users if shard_of(user, 2) == index) for index in range(2)]
    assert again == [0, 0]
    assert [(b.balance, b.held) for b in balances] == [(1_000, 0)] * 6


async def test_a_shard_sweeps_its_own_expired_holds_found_after_another_shards(db: Database) -> None:
    # user-4 belongs to shard 1 and user-0 to shard 0; user-4's hold is written and expires first, so the
    # sweep's query meets it before user-0's whichever order it reads them in.
    assert (shard_of("user-4", 2), shard_of("user-0", 2)) == (1, 0)
    sharded = ShardedLedger([Ledger(db, shard=(index, 2)) for index in range(2)])
    await sharded.start()
    for user in ("user-4", "user-0"):
        await sharded.credit(f"top-up-{user}", user, 1_000)
        await sharded.reserve(f"call-{user}", user, 100)
    await _expire_at(db, EXPIRY_MS, "call-user-4")
    await _expire_at(db, EXPIRY_MS + 1, "call-user-0")

    released = await sharded.shards[0].sweep_expired_holds(now_ms=EXPIRY_MS + 2)
    await sharded.close()

    assert released == 1
    assert await _statuses(db) == {"call-user-4": "held", "call-user-0": "released"}


def _expired_state(*expiring: HoldRow) -> BatchState:
    state = BatchState({"alice": Account("alice", 10_000, sum(hold.amount for hold in expiring))}, EXPIRY_MS)
    state.holds.update({hold.key: hold for hold in expiring})
    state.expired.extend(hold.key for hold in expiring)
    return state


def _sweep(now_ms: int) -> Op:
    return Op("sweep", asyncio.get_running_loop().create_future(), now_ms=now_ms)


async def test_the_sweep_rule_leaves_a_hold_expiring_exactly_at_the_sweeps_time() -> None:
    state = _expired_state(HoldRow("call-1", "alice", 1_000, "held", 0, None, EXPIRY_MS))
    outcome = decide(state, _sweep(EXPIRY_MS))
    assert not isinstance(outcome, Exception)
    assert (outcome(), state.holds["call-1"].status, state.account("alice").held, state.expired) == (
        0,
        "held",
        1_000,
        [],
    )


async def test_the_sweep_rule_skips_an_expired_hold_released_earlier_in_its_batch() -> None:
    state = _expired_state(HoldRow("call-1", "alice", 1_000, "held", 0, None, EXPIRY_MS - 1))
    release = decide(state, Op("release", asyncio.get_running_loop().create_future(), "call-1", "alice"))
    state.now_ms = EXPIRY_MS + 5
    outcome = decide(state, _sweep(EXPIRY_MS))
    assert not isinstance(release, Exception) and not isinstance(outcome, Exception)
    hold = state.holds["call-1"]
    assert (outcome(), hold.status, hold.resolved_at_ms, state.account("alice").held) == (0, "released", EXPIRY_MS, 0)


async def test_the_sweep_rule_skips_a_held_hold_without_an_expiry() -> None:
    state = _expired_state(HoldRow("call-1", "alice", 1_000, "held", 0, None, None))
    outcome = decide(state, _sweep(EXPIRY_MS))
    assert not isinstance(outcome, Exception)
    assert (outcome(), state.holds["call-1"].status, state.account("alice").held) == (0, "held", 1_000)
