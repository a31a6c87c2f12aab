"""Quotas over real HTTP, in-process against the demo upstream, on both databases: refusals the ecosystem
understands (429 with Retry-After and OpenAI's rate-limit headers, 402 for credit budgets), the official `openai`
client backing off and succeeding, stored quotas applied without a redeploy, and cities kept apart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from downcity.ai import AIService, Federation
from downcity.ai.openai_compatible import OpenAICompatibleProvider
from downcity.ai.pricing import Price
from downcity.client import AsyncAdminClient
from downcity.demo.upstream import bind_socket, build_server
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.quotas import Quota, QuotaBook
from downcity.runtime import Runtime
from downcity.settings import Settings
from tests.conftest import eventually

ADMIN_KEY = "test-admin"
CITIES = ("web", "app")
PER_REQUEST = 100
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)
QUOTAS = [
    Quota(id="starter", metadata={"plan": "starter"}, requests_per_minute=3),
    Quota(id="retry", metadata={"plan": "retry"}, requests_per_minute=1, per_user=True),
    Quota(id="daily", metadata={"plan": "daily"}, credits_per_day=10 * PER_REQUEST),
    Quota(id="tpm", metadata={"plan": "tpm"}, tokens_per_minute=400),
]


class AdvanceOn429:
    """Moves the quota clock past the window the moment a 429 leaves, so a client's retry meets the next one."""

    def __init__(self, app: ASGIApp, book: QuotaBook, ms: int) -> None:
        self.app, self.book, self.ms, self.refused = app, book, ms, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 429:
                self.refused += 1
                self.book.clock.advance(self.ms)
            await send(message)

        await self.app(scope, receive, watch)


@dataclass
class App:
    runtime: Runtime
    book: QuotaBook
    url: str
    http: httpx.AsyncClient
    watcher: AdvanceOn429

    async def token(self, plan: str | None, city: str = "web") -> str:
        user = f"u{uuid.uuid4().hex[:8]}"
        await self.runtime.ledger.credit(f"seed-{user}", f"{city}/{user}", 1_000_000)
        issued = await self.runtime.security.issuer.apply(city, user, {"plan": plan} if plan else None)
        return issued.user_token

    async def text(self, token: str, **body: object) -> httpx.Response:
        return await self.http.post(
            "/v1/ai/text", json={"prompt": "hello", **body}, headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture
async def app(database_url: str, tmp_path: Path, demo_upstream: str) -> AsyncIterator[App]:
    provider = OpenAICompatibleProvider("up", env_key="UP_KEY", base_url=demo_upstream)
    model = provider.model("flat", default=("text", "stream", "openai"), price=Price(per_request=PER_REQUEST))
    federation = Federation(name="quotas", quotas=QUOTAS).use(AIService().use(model))
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    runtime = await open_local_runtime(federation, settings)
    await runtime.env_store.set("UP_KEY", f"k-{uuid.uuid4().hex}")
    for city in CITIES:
        await runtime.cities.create(city.title(), city_id=city)
    await runtime.refresh()
    assert isinstance(runtime.quotas, QuotaBook)
    book = runtime.quotas
    watcher = AdvanceOn429(create_app(runtime, manage_runtime=False), book, 0)
    sock = bind_socket("127.0.0.1", 0)
    ready = asyncio.Event()
    server = build_server(watcher, on_ready=ready.set)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await asyncio.wait_for(ready.wait(), 20)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield App(runtime, book, url, http, watcher)
    server.should_exit = True
    await serving
    sock.close()
    await runtime.stop()


async def test_every_response_of_a_limited_scope_carries_the_rate_limit_headers(app: App) -> None:
    token = await app.token("starter")
    replies = [await app.text(token) for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in replies] == ["2", "1", "0"]
    assert {r.headers["x-ratelimit-limit-requests"] for r in replies} == {"3"}


async def test_a_spent_rpm_is_refused_with_429_retry_after_and_headers(app: App) -> None:
    app.book.clock.freeze(10 * 60_000 + 45_000)
    token = await app.token("starter")
    for _ in range(3):
        assert (await app.text(token)).status_code == 200

    refused = await app.text(token)

    assert (refused.status_code, refused.json()["error"]["type"]) == (429, "rate_limited")
    assert (refused.headers["retry-after"], refused.headers["retry-after-ms"]) == ("15", "15000")
    assert [refused.headers[name] for name in RATE_HEADERS] == ["3", "0", "15s"]


async def test_the_next_window_admits_again(app: App) -> None:
    token = await app.token("starter")
    for _ in range(3):
        await app.text(token)
    assert (await app.text(token)).status_code == 429
    app.book.clock.advance(60_000)
    assert (await app.text(token)).status_code == 200


async def test_an_unlimited_scope_gets_no_rate_limit_headers(app: App) -> None:
    reply = await app.text(await app.token(None))
    assert reply.status_code == 200
    assert not any(name in reply.headers for name in RATE_HEADERS)


async def test_the_openai_client_backs_off_on_429_and_then_succeeds(app: App) -> None:
    # 200 ms before the window ends: the refusal says retry in 200 ms, and the clock moves on as it is sent.
    app.book.clock.freeze(20 * 60_000 - 200)
    app.watcher.ms = 200
    token = await app.token("retry")
    assert (await app.text(token)).status_code == 200
    client = AsyncOpenAI(base_url=f"{app.url}/v1/ai", api_key=token, max_retries=2)

    completion = await client.chat.completions.create(
        model="flat", messages=[{"role": "user", "content": "after the limit"}]
    )

    assert completion.choices[0].message.content == "Echo: after the limit"
    assert app.watcher.refused == 1
    await client.close()


async def test_a_credit_budget_stops_at_exactly_the_budget(app: App) -> None:
    token = await app.token("daily")
    replies = await asyncio.gather(*(app.text(token) for _ in range(25)))

    assert sorted(r.status_code for r in replies) == [200] * 10 + [402] * 15
    assert {r.json()["error"]["type"] for r in replies if r.status_code == 402} == {"budget_exceeded"}
    (use,) = await app.book.consumption("web")
    assert (use["metric"], use["used"]) == ("credits_day", 10 * PER_REQUEST)


async def test_tokens_per_minute_reserve_the_estimate_and_refund_the_unused_part(app: App) -> None:
    token = await app.token("tpm")
    # Each call reserves its estimate (the prompt plus max_tokens=300): two at once would not fit 400.
    first = await app.text(token, max_tokens=300)
    usage = first.json()["metadata"]["usage"]
    used = usage["input_tokens"] + usage["output_tokens"]

    async def tokens_used() -> int:
        return sum(int(row["used"]) for row in await app.book.consumption("web") if row["metric"] == "tokens")

    assert await eventually(tokens_used, lambda tokens: tokens == used) == used
    assert (await app.text(token, max_tokens=300)).status_code == 200


async def test_one_citys_limits_never_touch_another(app: App) -> None:
    web, other = await app.token("starter", "web"), await app.token("starter", "app")
    for _ in range(3):
        assert (await app.text(web)).status_code == 200
    assert (await app.text(web)).status_code == 429
    assert (await app.text(other)).status_code == 200


async def test_a_stored_quota_applies_without_a_redeploy_and_can_be_removed(app: App) -> None:
    async with AsyncAdminClient(app.url, admin_key=ADMIN_KEY) as admin:
        stored = await admin.quotas.set("web", "pro-rpm", requests_per_minute=1, metadata={"plan": "pro"})
        token = await app.token("pro")
        assert (await app.text(token)).status_code == 200
        assert (await app.text(token)).status_code == 429
        listing = await admin.quotas.list("web")
        removed = await admin.quotas.remove("web", "pro-rpm")
        assert (await app.text(token)).status_code == 200

    assert (stored.id, stored.source, stored.metadata) == ("pro-rpm", "city", {"plan": "pro"})
    assert [(q.id, q.source) for q in listing.items] == [
        ("starter", "federation"),
        ("retry", "federation"),
        ("daily", "federation"),
        ("tpm", "federation"),
        ("pro-rpm", "city"),
    ]
    assert [(use.metric, use.used) for use in listing.consumption] == [("requests", 1)]
    assert removed is True


async def test_a_quota_for_an_unknown_city_is_refused_naming_it(app: App) -> None:
    reply = await app.http.post(
        "/v1/quotas/set",
        json={"city_id": "nope", "id": "q", "requests_per_minute": 1},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert (reply.status_code, reply.json()["error"]["field"]) == (404, "city_id")


async def test_a_quota_without_a_limit_is_a_422_naming_the_body(app: App) -> None:
    reply = await app.http.post(
        "/v1/quotas/set", json={"city_id": "web", "id": "q"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert reply.status_code == 422
