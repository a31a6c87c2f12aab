"""Non-streaming chat/completions over HTTP: what the usage row and the `after` hooks see, the key scope it shares
with streamed chats, and the headers that go back. In-process app over ASGI against the demo upstream, both
databases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from downcity.ai import AIService, Context, Federation, OpenAICompatibleClient, Provider
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.quotas import Quota
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.store.schema import usage_records
from downcity.types import ChargeDraft

CITY = "shop"
CREDIT = 100_000
FLAT = 500


class Upstream(Provider):
    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)


def _flat(ctx: Context, output: Any) -> ChargeDraft:
    return ChargeDraft(amount_microcredits=FLAT)


@dataclass
class App:
    runtime: Runtime
    http: httpx.AsyncClient
    outputs: list[Any]

    async def chat(
        self, content: str, *, key: str | None = None, plan: str | None = None, stream: bool = False
    ) -> httpx.Response:
        issued = await self.runtime.security.issuer.apply(CITY, "u1", {"plan": plan} if plan else None)
        headers = {"Authorization": f"Bearer {issued.user_token}"} | ({"Idempotency-Key": key} if key else {})
        body = {"model": "flat", "stream": stream, "messages": [{"role": "user", "content": content}]}
        return await self.http.post("/v1/ai/chat/completions", json=body, headers=headers)

    async def balance(self) -> tuple[int, int]:
        value = await self.runtime.ledger.balance(f"{CITY}/u1")
        return value.balance, value.held

    async def usage(self) -> list[Any]:
        async with self.runtime.db.connect() as conn:
            return list(await conn.execute(select(usage_records).order_by(usage_records.c.created_at_ms)))


@pytest.fixture
async def app(database_url: str, tmp_path: Path, demo_upstream: str) -> AsyncIterator[App]:
    upstream = Upstream("up", env_key="UP_KEY", base_url=demo_upstream)
    ai = AIService().use(upstream.model("flat", default="openai", bill=_flat, hold_microcredits=FLAT))
    quota = Quota(id="metered", metadata={"plan": "metered"}, requests_per_minute=5)
    federation = Federation(name="chats", quotas=[quota]).use(ai)
    outputs: list[Any] = []
    federation.after(lambda ctx: outputs.append(ctx.output))
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key="test-admin")
    runtime = await open_local_runtime(federation, settings)
    await runtime.env_store.set("UP_KEY", f"k-{uuid.uuid4().hex}")
    await runtime.cities.create("Shop", city_id=CITY)
    await runtime.refresh()
    await runtime.ledger.credit(f"seed-{uuid.uuid4().hex}", f"{CITY}/u1", CREDIT)
    transport = httpx.ASGITransport(app=create_app(runtime, manage_runtime=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://downcity.test", timeout=30) as http:
        yield App(runtime, http, outputs)
    await runtime.stop()


async def test_a_chats_usage_row_names_the_key_variable_that_served_it(app: App) -> None:
    response = await app.chat("hello")

    [row] = await app.usage()
    assert (response.status_code, row.status, row.key_name) == (200, "ok", "UP_KEY")


async def test_a_chats_after_hooks_see_the_upstreams_answer(app: App) -> None:
    response = await app.chat("hello")

    assert response.status_code == 200
    assert app.outputs == [response.json()]
    assert response.json()["choices"][0]["message"]["content"] == "Echo: hello"


async def test_a_key_used_for_a_chat_cannot_be_reused_for_a_streamed_chat(app: App) -> None:
    first = await app.chat("hello", key="c-shared")

    streamed = await app.chat("hello", key="c-shared", stream=True)

    assert (first.status_code, streamed.status_code, streamed.json()["error"]["type"]) == (
        200,
        409,
        "idempotency_conflict",
    )
    assert (len(await app.usage()), await app.balance()) == (1, (CREDIT - FLAT, 0))


async def test_a_chat_answer_carries_its_quotas_rate_limit_headers(app: App) -> None:
    response = await app.chat("hello", plan="metered")

    assert response.status_code == 200
    assert (response.headers["x-ratelimit-limit-requests"], response.headers["x-ratelimit-remaining-requests"]) == (
        "5",
        "4",
    )
