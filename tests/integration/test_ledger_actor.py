"""The Ledger actor on a real local Ray cluster, over SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import ray
from sqlalchemy import select

from actors.ledger import LEDGER_ACTOR_NAME, LedgerClient, get_ledger
from downcity.errors import DowncityHTTPError
from downcity.ledger import Balance
from downcity.store import Database
from downcity.store.schema import ledger_entries
from tests.conftest import eventually

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]

PRICE = 2_000
REPO_ROOT = Path(__file__).resolve().parents[2]
_CREATE_FROM_ANOTHER_JOB = """
import sys, ray
ray.init(address=sys.argv[1], namespace="downcity", log_to_driver=False)
from actors.ledger import get_ledger
ray.get(get_ledger(sys.argv[2], name=sys.argv[3]).handles[0].ping.remote())
"""

ClientFactory = Callable[[str], LedgerClient]


def _kill_for_good(name: str) -> None:
    """Kill the detached actor and wait until its name is free for the next test."""
    try:
        ray.kill(ray.get_actor(name, namespace="downcity"), no_restart=True)
    except ValueError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace="downcity")
        except ValueError:
            return
        time.sleep(0.05)
    raise AssertionError(f"actor {name} still registered 10 s after it was killed")


@pytest.fixture
async def ledger_client(database_url: str) -> AsyncIterator[ClientFactory]:
    """Ledger clients on their own actor names; the detached actors are killed after the test."""
    names: list[str] = []

    def make(name: str) -> LedgerClient:
        names.append(name)
        return get_ledger(database_url, name=name)

    yield make
    for name in names:
        _kill_for_good(name)


def _unique_name() -> str:
    return f"downcity-ledger-test-{uuid.uuid4().hex[:8]}"


async def test_the_ledger_actor_is_named_and_detached_in_the_downcity_namespace(
    database_url: str, ledger_client: ClientFactory
) -> None:
    gcs_address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # A versioned name of our own: the deployed app in this session owns the production name.
    name = f"{LEDGER_ACTOR_NAME}-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-c", _CREATE_FROM_ANOTHER_JOB, gcs_address, database_url, name]
    finished = await asyncio.to_thread(
        subprocess.run, command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    client = ledger_client(name)
    assert finished.returncode == 0, finished.stderr
    # The creating job has exited: only a detached actor is still there, under its name and namespace.
    survivor = ray.get_actor(name, namespace="downcity")
    assert await survivor.ping.remote() == database_url
    assert client.handles[0] == survivor


async def test_200_concurrent_calls_through_the_actor_admit_exactly_57(
    database_url: str, ledger_client: ClientFactory
) -> None:
    client = ledger_client(_unique_name())
    await client.credit("top-up-1", "alice", 57 * PRICE)

    async def call(index: int) -> bool:
        try:
            await client.reserve(f"call-{index}", "alice", PRICE)
        except DowncityHTTPError as refused:
            assert refused.status == 402
            return False
        await client.settle(f"call-{index}", "alice", PRICE)
        return True

    outcomes = await asyncio.gather(*(call(index) for index in range(200)))
    assert (outcomes.count(True), outcomes.count(False)) == (57, 143)
    assert await client.balance("alice") == Balance(user_id="alice", balance=0, held=0, available=0)


async def _kill_three_times(name: str, issued: list[str], succeeded: list[str]) -> list[int]:
    """Kill the actor three times, each once 20 more calls have completed since the last kill (it restarted and
    serves again), then wait for 20 more; returns how many calls were in flight at each kill."""
    in_flight = []

    async def completed() -> int:
        return len(succeeded)

    for kill in range(4):
        target = len(succeeded) + 20
        await eventually(completed, lambda count, target=target: count >= target)
        if kill < 3:
            in_flight.append(len(issued) - len(succeeded))
            ray.kill(ray.get_actor(name, namespace="downcity"), no_restart=False)
    return in_flight


async def test_killing_the_actor_under_load_neither_loses_nor_doubles_a_charge(
    database_url: str, ledger_client: ClientFactory
) -> None:
    name = _unique_name()
    client = ledger_client(name)
    credits = 10**12
    await client.credit("top-up-1", "alice", credits)
    numbers = itertools.count()
    issued: list[str] = []
    succeeded: list[str] = []
    killed = asyncio.Event()

    async def caller() -> None:
        while not killed.is_set():
            key = f"call-{next(numbers)}"
            issued.append(key)
            await client.reserve(key, "alice", PRICE)
            await client.settle(key, "alice", PRICE)
            succeeded.append(key)

    callers = [asyncio.create_task(caller()) for _ in range(40)]
    in_flight = await _kill_three_times(name, issued, succeeded)
    killed.set()
    await asyncio.gather(*callers)
    db = Database(database_url)
    async with db.connect() as conn:
        charges = (await conn.execute(select(ledger_entries).where(ledger_entries.c.kind == "charge"))).all()
    await db.dispose()
    # Every caller had a reserve or settle in flight when each kill landed.
    assert in_flight == [40, 40, 40]
    assert sorted(succeeded) == sorted(issued)
    assert sorted(row.idempotency_key for row in charges) == sorted(issued)
    remaining = credits - sum(row.amount_microcredits for row in charges)
    assert remaining == credits - len(issued) * PRICE
    assert await client.balance("alice") == Balance(user_id="alice", balance=remaining, held=0, available=remaining)


async def test_a_restarted_actor_keeps_balances_and_holds(database_url: str, ledger_client: ClientFactory) -> None:
    name = _unique_name()
    client = ledger_client(name)
    await client.credit("top-up-1", "alice", 10_000)
    await client.reserve("call-1", "alice", 3_000)
    ray.kill(ray.get_actor(name, namespace="downcity"), no_restart=False)
    assert await client.balance("alice") == Balance(user_id="alice", balance=10_000, held=3_000, available=7_000)
    assert await client.renew(["call-1", "no-such-call"], "alice") == ["call-1"]
    settled = await client.settle("call-1", "alice", 2_500)
    assert settled.balance == Balance(user_id="alice", balance=7_500, held=0, available=7_500)
    assert await client.renew(["call-1"], "alice") == []
