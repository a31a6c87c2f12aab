"""Calls admitted on credit leases through real HTTP, in-process, on both databases, against the demo upstream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from downcity.ai import AIService, Federation, OpenAICompatibleClient, Provider
from downcity.demo.upstream import bind_socket, build_server
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.metrics import CallMetrics
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.store.schema import holds, ledger_entries, usage_records
from downcity.types import ChargeDraft

ADMIN_KEY = "test-admin"
CITY = "shop"
ACCOUNT = f"{CITY}/u1"
FLAT = 500


class Upstream(Provider):
    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)


def _federation(upstream_url: str) -> Federation:
    chat = Upstream("up", env_key="UP_KEY", base_url=upstream_url)
    flat = chat.model(
        "flat",
        default=("text", "stream", "openai"),
        bill=lambda ctx, output: ChargeDraft(amount_microcredits=FLAT),
        hold_microcredits=FLAT,
    )
    return Federation(name="leases").use(AIService().use(flat))


@pytest.fixture
async def served(
    database_url: str, tmp_path: Path, demo_upstream: str
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient, str]]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY, leases=True, lease_idle_s=60)
    runtime = await open_local_runtime(_federation(demo_upstream), settings)
    await runtime.env_store.set("UP_KEY", f"k-{uuid.uuid4().hex}")
    await runtime.cities.create("Shop", city_id=CITY)
    await runtime.refresh()
    token = (await runtime.security.issuer.apply(CITY, "u1")).user_token
    sock = bind_socket("127.0.0.1", 0)
    ready = asyncio.Event()
    server = build_server(create_app(runtime, manage_runtime=False), on_ready=ready.set)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await asyncio.wait_for(ready.wait(), 20)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30) as http:
        yield runtime, http, token
    server.should_exit = True
    await serving
    sock.close()
    await runtime.stop()


async def _count(runtime: Runtime, table: Any, *where: Any) -> int:
    async with runtime.db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def test_calls_on_a_lease_sell_exactly_the_balance_and_the_lease_goes_back_on_shutdown(
    served: tuple[Runtime, httpx.AsyncClient, str],
) -> None:
    runtime, http, token = served
    await runtime.ledger.credit("seed", ACCOUNT, 11 * FLAT)
    user = {"Authorization": f"Bearer {token}"}
    routes = [
        ("/v1/ai/text", {"prompt": "hello"}),
        ("/v1/ai/stream", {"prompt": "hello"}),
        ("/v1/ai/chat/completions", {"messages": [{"role": "user", "content": "hello"}]}),
        ("/v1/ai/chat/completions", {"messages": [{"role": "user", "content": "hello"}], "stream": True}),
    ]
    answers = await asyncio.gather(
        *(http.post(path, json=body, headers=user) for index in range(32) for path, body in [routes[index % 4]])
    )
    assert sorted(answer.status_code for answer in answers) == [200] * 11 + [402] * 21
    assert await _count(runtime, holds, holds.c.owner.is_not(None)) >= 1
    assert runtime.leases is not None
    await runtime.leases.close()
    balance = await runtime.ledger.balance(ACCOUNT)
    assert (balance.balance, balance.held) == (0, 0)
    assert await _count(runtime, ledger_entries, ledger_entries.c.kind == "charge") == 11
    assert await _count(runtime, usage_records) == 32
    assert await _count(runtime, holds, holds.c.owner.is_not(None), holds.c.status == "held") == 0


async def test_a_failed_call_on_a_lease_frees_its_share_and_is_not_charged(
    served: tuple[Runtime, httpx.AsyncClient, str],
) -> None:
    runtime, http, token = served
    await runtime.ledger.credit("seed", ACCOUNT, 100 * FLAT)
    user = {"Authorization": f"Bearer {token}"}
    ok = await http.post("/v1/ai/text", json={"prompt": "hello"}, headers=user)
    assert runtime.leases is not None
    lease = runtime.leases.leases[ACCOUNT]
    left = lease.amount
    failed = await http.post("/v1/ai/text", json={"prompt": "[[fail:500]]"}, headers=user)
    assert (ok.status_code, failed.status_code) == (200, 502)
    assert runtime.leases.leases[ACCOUNT] is lease
    assert (lease.in_flight, lease.amount, left) == (0, left, 4 * FLAT - FLAT)
    assert await _count(runtime, ledger_entries, ledger_entries.c.kind == "charge") == 1
    await runtime.leases.close()
    balance = await runtime.ledger.balance(ACCOUNT)
    assert (balance.balance, balance.held) == (99 * FLAT, 0)


class Admissions:
    """A `Metrics` that keeps how each finished call was admitted."""

    def __init__(self) -> None:
        self.admitted: list[str] = []

    def call_finished(self, call: CallMetrics) -> None:
        self.admitted.append(call.admitted)

    def flush(self) -> None:
        """Nothing is kept."""


async def test_metrics_tell_a_call_admitted_on_a_lease_from_one_on_its_own_hold(
    served: tuple[Runtime, httpx.AsyncClient, str],
) -> None:
    runtime, http, token = served
    recorded = Admissions()
    runtime.metrics = recorded  # type: ignore[assignment]
    # Below a lease's minimum (4 holds) u1's call takes its own hold; u2's balance is enough for a lease.
    await runtime.ledger.credit("seed", ACCOUNT, 3 * FLAT)
    await runtime.ledger.credit("seed-2", f"{CITY}/u2", 100 * FLAT)
    rich = (await runtime.security.issuer.apply(CITY, "u2")).user_token
    for user in (token, rich):
        answer = await http.post("/v1/ai/text", json={"prompt": "hello"}, headers={"Authorization": f"Bearer {user}"})
        assert answer.status_code == 200, answer.text
    assert recorded.admitted == ["hold", "lease"]
