"""A priced model over real HTTP against the demo upstream: cached and reasoning tokens billed at their rates.

The app runs in-process behind uvicorn on a real socket, on both databases; the demo upstream reports cached
and reasoning tokens when the prompt carries `[[cached:N]]` and `[[reasoning:N]]`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from downcity.ai import AIService, Federation
from downcity.ai.openai_compatible import OpenAICompatibleProvider
from downcity.ai.pricing import Price
from downcity.demo.upstream import bind_socket, build_server
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.runtime import Runtime
from downcity.settings import Settings

ADMIN_KEY = "test-admin"
CITY = "priced"
PRICE = Price(input=2_000_000, cached_input=500_000, output=8_000_000, reasoning=16_000_000, per_request=5)
CREDIT = 100_000
# Six words and two markers: the demo upstream counts eight prompt tokens and echoes nine words.
PROMPT = "alpha beta gamma delta epsilon zeta [[cached:4]] [[reasoning:7]]"
PROMPT_TOKENS, CACHED, REPLY_WORDS, REASONING = 8, 4, 9, 7
# Picocredits per class (tokens x rate per million), then one rounding up, then the per-request price.
CLASSES = {
    "input": (PROMPT_TOKENS - CACHED) * 2_000_000,
    "cached_input": CACHED * 500_000,
    "output": REPLY_WORDS * 8_000_000,
    "reasoning": REASONING * 16_000_000,
    "request": 5 * 1_000_000,
}
CHARGE = -(-sum(CLASSES.values()) // 1_000_000)


@dataclass
class App:
    runtime: Runtime
    http: httpx.AsyncClient
    token: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    @property
    def user(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def app(database_url: str, tmp_path: Path, demo_upstream: str) -> AsyncIterator[App]:
    provider = OpenAICompatibleProvider("up", env_key="UP_KEY", base_url=demo_upstream)
    model = provider.model("priced", default=("text", "stream", "openai"), price=PRICE, max_output_tokens=1_000)
    federation = Federation(name="priced").use(AIService().use(model))
    runtime = await open_local_runtime(
        federation, Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    )
    await runtime.env_store.set("UP_KEY", f"k-{uuid.uuid4().hex}")
    await runtime.cities.create("Priced", city_id=CITY)
    await runtime.refresh()
    issued = await runtime.security.issuer.apply(CITY, "u1")
    await runtime.ledger.credit("seed", f"{CITY}/u1", CREDIT)
    sock = bind_socket("127.0.0.1", 0)
    ready = asyncio.Event()
    server = build_server(create_app(runtime, manage_runtime=False), on_ready=ready.set)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await asyncio.wait_for(ready.wait(), 20)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield App(runtime, http, issued.user_token)
    server.should_exit = True
    await serving
    sock.close()
    await runtime.stop()


async def _records(app: App) -> list[dict[str, object]]:
    listed = await app.http.get("/v1/usage/list", params={"city_id": CITY}, headers=app.admin)
    assert listed.status_code == 200, listed.text
    items: list[dict[str, object]] = listed.json()["items"]
    return items


async def test_text_bills_cached_and_reasoning_tokens_at_their_rates_exactly(app: App) -> None:
    reply = await app.http.post("/v1/ai/text", json={"prompt": PROMPT, "max_tokens": 50}, headers=app.user)

    assert reply.status_code == 200, reply.text
    metadata = reply.json()["metadata"]
    assert metadata["usage"] == {
        "input_tokens": PROMPT_TOKENS,
        "output_tokens": REPLY_WORDS + REASONING,
        "cached_tokens": CACHED,
        "reasoning_tokens": REASONING,
        "cache_write_tokens": 0,
        "images": 0,
        "seconds": 0,
    }
    assert metadata["charge"]["amount_microcredits"] == CHARGE
    balance = await app.runtime.ledger.balance(f"{CITY}/u1")
    assert (balance.balance, balance.held) == (CREDIT - CHARGE, 0)
    (record,) = await _records(app)
    assert (record["charge_microcredits"], record["class_picocredits"]) == (CHARGE, CLASSES)


async def test_chat_completions_streamed_bills_the_same_classes(app: App) -> None:
    body = {"messages": [{"role": "user", "content": PROMPT}], "stream": True, "max_tokens": 50}
    reply = await app.http.post("/v1/ai/chat/completions", json=body, headers=app.user)

    assert reply.status_code == 200, reply.text
    assert reply.text.endswith("data: [DONE]\n\n")
    (record,) = await _records(app)
    assert (record["cached_tokens"], record["reasoning_tokens"]) == (CACHED, REASONING)
    assert (record["charge_microcredits"], record["class_picocredits"]) == (CHARGE, CLASSES)


async def test_the_summary_groups_credits_by_class(app: App) -> None:
    for _ in range(2):
        sent = await app.http.post("/v1/ai/text", json={"prompt": PROMPT, "max_tokens": 50}, headers=app.user)
        assert sent.status_code == 200, sent.text

    summary = await app.http.get("/v1/usage/summary", params={"city_id": CITY}, headers=app.admin)

    (row,) = summary.json()["items"]
    assert (row["key"], row["charge_microcredits"]) == ("priced", 2 * CHARGE)
    assert row["class_picocredits"] == {name: 2 * cost for name, cost in CLASSES.items()}


async def test_a_priced_call_holds_what_its_request_may_cost(app: App) -> None:
    # The hold of max_tokens=50 at the reasoning rate alone (800 microcredits) exceeds a 700-microcredit balance.
    await app.runtime.ledger.debit("drain", f"{CITY}/u1", CREDIT - 700)
    reply = await app.http.post("/v1/ai/text", json={"prompt": PROMPT, "max_tokens": 50}, headers=app.user)
    assert (reply.status_code, reply.json()["error"]["type"]) == (402, "insufficient_balance")
    cheap = await app.http.post("/v1/ai/text", json={"prompt": PROMPT, "max_tokens": 20}, headers=app.user)
    assert cheap.status_code == 200, cheap.text


async def test_models_show_the_public_price(app: App) -> None:
    listed = await app.http.get("/v1/ai/models", headers=app.user)
    (model,) = listed.json()["items"]
    assert (model["price"], model["max_output_tokens"]) == (PRICE.to_public(), 1_000)
