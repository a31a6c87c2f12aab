"""Settled charges per second into PostgreSQL: Ledger with and without group commit, and the Ray actor.

Each settled charge is a `reserve` then a `settle` of a fixed price, issued by many concurrent callers
over many users. Every mode gets a fresh database, dropped at the end.

    .venv/bin/python bench/ledger_bench.py [--charges 20000] [--actor-charges 10000] [--serial-charges 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downcity.ledger import Ledger, LedgerPort
from downcity.store import Database
from downcity.store.schema import balances, ledger_entries

PRICE = 1_000
CREDIT = 10**12


@dataclass(frozen=True)
class Run:
    """One measured mode."""

    label: str
    charges: int
    seconds: float

    @property
    def rate(self) -> float:
        """Settled charges per second."""
        return self.charges / self.seconds


class Databases:
    """Fresh PostgreSQL databases on one server, all dropped by `drop_all`."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names: list[str] = []

    async def _execute(self, sql: str) -> None:
        engine = create_async_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    async def create(self) -> str:
        """A new migrated database; its URL."""
        name = f"downcity_bench_{uuid.uuid4().hex[:10]}"
        await self._execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        url = f"{self.admin_url.rpartition('/')[0]}/{name}"
        db = Database(url)
        await db.migrate()
        await db.dispose()
        return url

    async def drop_all(self) -> None:
        """Drop every database this run created."""
        for name in self.names:
            await self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def drive(ledger: LedgerPort, charges: int, callers: int, users: int) -> float:
    """Credit every user, then run `charges` reserve+settle pairs from `callers` tasks; the seconds taken."""
    await asyncio.gather(*(ledger.credit(f"credit-{user}", f"user-{user}", CREDIT) for user in range(users)))
    numbers = iter(range(charges))

    async def caller() -> None:
        for number in numbers:
            user = f"user-{number % users}"
            await ledger.reserve(f"charge-{number}", user, PRICE)
            await ledger.settle(f"charge-{number}", user, PRICE)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return time.perf_counter() - started


async def verify(url: str, charges: int, users: int) -> None:
    """Fail loudly unless exactly `charges` charges were written and balances add up."""
    db = Database(url)
    async with db.connect() as conn:
        entries = (await conn.execute(select(func.count()).where(ledger_entries.c.kind == "charge"))).scalar_one()
        total = (await conn.execute(select(func.sum(balances.c.credits_microcredits)))).scalar_one()
    await db.dispose()
    if entries != charges or total != users * CREDIT - charges * PRICE:
        raise SystemExit(f"inconsistent ledger: {entries} charges, total balance {total}")


async def run_plain(databases: Databases, label: str, charges: int, args: argparse.Namespace, gc: bool) -> Run:
    """Measure the in-process Ledger."""
    url = await databases.create()
    db = Database(url)
    ledger = Ledger(db, group_commit=gc)
    await ledger.start()
    seconds = await drive(ledger, charges, args.callers, args.users)
    await ledger.close()
    await db.dispose()
    await verify(url, charges, args.users)
    return Run(label, charges, seconds)


async def run_actor(databases: Databases, charges: int, args: argparse.Namespace) -> Run:
    """Measure the Ledger behind its Ray actor, called from this driver."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from actors.ledger import get_ledger

    url = await databases.create()
    ray.init(address="local", include_dashboard=False, namespace="downcity", log_to_driver=False)
    name = f"downcity-ledger-bench-{uuid.uuid4().hex[:6]}"
    try:
        client = get_ledger(url, name=name)
        await client.balance("warm-up")
        seconds = await drive(client, charges, args.callers, args.users)
    finally:
        ray.kill(ray.get_actor(name, namespace="downcity"), no_restart=True)
        ray.shutdown()
    await verify(url, charges, args.users)
    return Run("Ray actor, group commit", charges, seconds)


def report(runs: list[Run]) -> None:
    """Print each mode's rate and the ratios between them."""
    for run in runs:
        print(f"{run.label:<34} {run.charges:>7} charges  {run.seconds:7.2f} s  {run.rate:8.0f} charges/s")
    grouped, serial, actor = runs
    print(f"group commit / commit per op:      {grouped.rate / serial.rate:6.1f}x")
    print(f"Ray actor / in-process group commit: {actor.rate / grouped.rate:5.2f}x")


async def main(args: argparse.Namespace) -> None:
    """Run the three modes, then drop their databases."""
    databases = Databases(args.pg_url)
    try:
        runs = [
            await run_plain(databases, "Ledger, group commit", args.charges, args, gc=True),
            await run_plain(databases, "Ledger, commit per op", args.serial_charges, args, gc=False),
            await run_actor(databases, args.actor_charges, args),
        ]
    finally:
        await databases.drop_all()
    report(runs)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--charges", type=int, default=20_000)
    parser.add_argument("--serial-charges", type=int, default=1_000)
    parser.add_argument("--actor-charges", type=int, default=10_000)
    parser.add_argument("--callers", type=int, default=1_000)
    parser.add_argument("--users", type=int, default=1_000)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
