"""The metrics port: where calls and ledger commits report, checked in-process on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from downcity.http.app import create_app
from downcity.ledger import Ledger
from downcity.local import open_local_runtime
from downcity.metrics import CallMetrics
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.store import Database
from examples.federation import federation
from tests.conftest import TEST_ADMIN_KEY, TEST_MASTER_KEY

CITY = "metrics-city"


@dataclass
class Recorded:
    """A `Metrics` that keeps what it is told, to read back in assertions."""

    calls: list[CallMetrics] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    flushes: int = 0

    def call_finished(self, call: CallMetrics) -> None:
        self.calls.append(call)

    def ledger_batch(self, *, shard: int, ops: int, queue_depth: int, commit_s: float) -> None:
        self.batches.append({"shard": shard, "ops": ops, "queue_depth": queue_depth, "commit_s": commit_s})

    def jobs_state(self, *, pending: int, in_flight: int, lag_p50_ms: int | None, lag_p99_ms: int | None) -> None:
        raise AssertionError("no job scheduler runs in these tests")

    def leases_state(self, *, held: int, leased_microcredits: int, in_flight_microcredits: int) -> None:
        raise AssertionError("these tests run without credit leases")

    def flush(self) -> None:
        self.flushes += 1


@dataclass
class Served:
    """An in-process app over a runtime whose metrics are recorded, and a user token of `CITY`."""

    client: httpx.AsyncClient
    recorded: Recorded
    token: str
    quota_token: str


@pytest.fixture
async def served(database_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, master_key=TEST_MASTER_KEY, admin_key=TEST_ADMIN_KEY
    )
    runtime: Runtime = await open_local_runtime(federation, settings)
    recorded = Recorded()
    runtime.metrics = recorded
    await runtime.cities.create("Metrics", CITY)
    await runtime.ledger.credit("seed", f"{CITY}/u1", 1_000_000)
    token = (await runtime.security.issuer.apply(CITY, "u1", {})).user_token
    quota_token = (await runtime.security.issuer.apply(CITY, "u2", {"quota_exceeded": True})).user_token
    await runtime.refresh()
    transport = httpx.ASGITransport(app=create_app(runtime, manage_runtime=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://downcity.test") as client:
        yield Served(client, recorded, token, quota_token)
    await runtime.stop()


async def text(served: Served, token: str, prompt: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return await served.client.post("/v1/ai/text", json={"model": "reverse", "prompt": prompt}, headers=headers)


async def test_a_settled_call_reports_its_labels_tokens_and_charge(served: Served) -> None:
    reply = await text(served, served.token, "one two three")
    assert reply.status_code == 200, reply.text
    [call] = served.recorded.calls
    assert (call.city, call.model, call.provider, call.status, call.error_type) == (
        CITY,
        "reverse",
        "local-tools",
        "ok",
        None,
    )
    assert (call.input_tokens, call.output_tokens, call.charged_microcredits, call.admitted) == (3, 3, 130, "hold")
    assert call.ttfb_s is not None and 0 <= call.ttfb_s <= call.latency_s


async def test_a_refused_call_reports_its_error_type_and_no_charge(served: Served) -> None:
    reply = await text(served, served.quota_token, "over quota")
    assert reply.status_code == 429
    [call] = served.recorded.calls
    assert (call.status, call.error_type, call.charged_microcredits, call.admitted) == (
        "refused",
        "quota_exceeded",
        0,
        "none",
    )


async def test_a_ledger_reports_every_committed_op_with_its_shard(db: Database) -> None:
    recorded = Recorded()
    ledger = Ledger(db, metrics=recorded)
    await ledger.start()
    await asyncio.gather(*(ledger.credit(f"k{i}", f"user{i}", 10) for i in range(5)))
    await ledger.close()
    assert sum(batch["ops"] for batch in recorded.batches) == 5
    assert {batch["shard"] for batch in recorded.batches} == {0}
    assert all(batch["commit_s"] > 0 for batch in recorded.batches)
    assert recorded.batches[-1]["queue_depth"] == 0


async def test_a_ledger_reports_the_ops_still_queued_behind_each_commit(db: Database) -> None:
    recorded = Recorded()
    ledger = Ledger(db, group_commit=False, metrics=recorded)
    await ledger.start()
    # One op per commit: while the first commits, the other four are queued behind it.
    await asyncio.gather(*(ledger.credit(f"k{i}", f"user{i}", 10) for i in range(5)))
    await ledger.close()
    assert [(batch["ops"], batch["queue_depth"]) for batch in recorded.batches] == [
        (1, 4),
        (1, 3),
        (1, 2),
        (1, 1),
        (1, 0),
    ]
