"""Retries, error fallback, circuit breakers, timeouts and key pools, over HTTP on the session's Ray cluster.

A second Serve application (`tests/integration/resilience_federation.py`) shares the session app's database,
Ledger and JobManager; faults come from the demo upstream's prompt markers and refused keys.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from ray import serve
from sqlalchemy import select

from actors.cli.status import provider_resilience
from downcity.store import Database
from downcity.store.schema import ledger_entries, usage_records
from tests.integration import resilience_federation as spec
from tests.integration.conftest import ServedApp, deploy_beside, eventually

# The module's first test also waits for the session app and this one to deploy.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
SETUP_DEADLINE_S = 180

FEDERATION = "tests.integration.resilience_federation:federation"
APP = "downcity-resilience"
PREFIX = "/resil"
CREDIT = 100_000
GOOD_KEY = "sk-pool-good-key"
REFUSED_KEY = "sk-pool-refused-429"


@dataclass
class Resilient:
    """The resilience app: its URL and the session app it shares a database with."""

    url: str
    served: ServedApp

    async def user(self) -> tuple[str, str]:
        """A fresh user with credit: (account id, token)."""
        city_id, user_id, token = await self.served.new_user(credit=CREDIT)
        return f"{city_id}/{user_id}", token

    def client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def openai(self, token: str) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=f"{self.url}/v1/ai", api_key=token, max_retries=0)

    async def rows(self, account: str) -> list[dict[str, Any]]:
        """The account's usage rows, oldest first."""
        user_id = account.split("/", 1)[1]
        async with self._db() as db, db.connect() as conn:
            found = await conn.execute(
                select(usage_records).where(usage_records.c.user_id == user_id).order_by(usage_records.c.created_at_ms)
            )
            return [dict(row._mapping) for row in found]

    async def charges(self, account: str) -> list[int]:
        """The amounts of the call entries the Ledger wrote for the account."""
        async with self._db() as db, db.connect() as conn:
            found = await conn.execute(
                select(ledger_entries.c.amount_microcredits).where(
                    ledger_entries.c.user_id == account, ledger_entries.c.idempotency_key.like("call:%")
                )
            )
            return [abs(row[0]) for row in found]

    async def balance(self, account: str) -> int:
        city_id, user_id = account.split("/", 1)
        got = await self.served.admin.get("/v1/balance/get", params={"city_id": city_id, "user_id": user_id})
        return int(got.json()["balance"])

    def _db(self) -> Any:
        return _Opened(self.served.database_url)


class _Opened:
    def __init__(self, url: str) -> None:
        self.db = Database(url)

    async def __aenter__(self) -> Database:
        return self.db

    async def __aexit__(self, *_: object) -> None:
        await self.db.dispose()


@pytest.fixture(scope="module")
async def app(served: ServedApp, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Resilient]:
    for key, value in (("POOL_A_KEY", REFUSED_KEY), ("POOL_B_KEY", GOOD_KEY)):
        stored = await served.admin.post("/v1/env/set", json={"key": key, "value": value})
        assert stored.status_code == 200, stored.text
    data_dir = str(tmp_path_factory.mktemp("resil"))
    await asyncio.to_thread(
        deploy_beside, FEDERATION, APP, PREFIX, served.database_url, data_dir, deadline_s=SETUP_DEADLINE_S
    )
    yield Resilient(served.url + PREFIX, served)
    await asyncio.to_thread(serve.delete, APP)


def prompt(*markers: str) -> str:
    """A prompt no other test sends (the demo counts `[[fail-times:N]]` per text)."""
    return " ".join([f"hello {uuid.uuid4().hex[:8]}", *markers])


def ui_events(body: str) -> list[dict[str, Any]]:
    events = [line.removeprefix("data: ") for line in body.split("\n\n") if line.startswith("data: ")]
    return [json.loads(event) for event in events if event != "[DONE]"]


def statuses(row: dict[str, Any]) -> list[tuple[str, int]]:
    return [(attempt["model"], attempt["status"]) for attempt in row["attempts"] or []]


# --- retries ---------------------------------------------------------------------------------------------------


async def test_a_500_then_a_200_is_one_answer_one_charge_and_one_row_of_two_attempts(app: Resilient) -> None:
    account, token = await app.user()
    async with app.client(token) as http:
        reply = await http.post(
            "/v1/ai/text", json={"model": "retrying-chat", "prompt": prompt("[[fail:500]]", "[[fail-times:1]]")}
        )
    assert reply.status_code == 200, reply.text
    charge = reply.json()["metadata"]["charge"]["amount_microcredits"]
    [row] = await app.rows(account)
    assert (row["status"], row["http_status"], statuses(row)) == (
        "ok",
        200,
        [("retrying-chat", 500), ("retrying-chat", 200)],
    )
    assert (await app.charges(account), row["charge_microcredits"]) == ([charge], charge)
    assert await app.balance(account) == CREDIT - charge


async def test_retry_after_one_second_is_honoured(app: Resilient) -> None:
    account, token = await app.user()
    started = time.perf_counter()
    async with app.client(token) as http:
        reply = await http.post(
            "/v1/ai/text",
            json={"model": "retrying-chat", "prompt": prompt("[[fail:429]]", "[[retry-after:1]]", "[[fail-times:1]]")},
        )
    elapsed = time.perf_counter() - started
    assert reply.status_code == 200, reply.text
    assert elapsed >= 1.0
    [row] = await app.rows(account)
    assert statuses(row) == [("retrying-chat", 429), ("retrying-chat", 200)]


async def test_exhausted_retries_fall_back_to_the_next_model_within_one_call(app: Resilient) -> None:
    account, token = await app.user()
    async with app.client(token) as http:
        reply = await http.post(
            "/v1/ai/text", json={"model": "falling-chat", "prompt": prompt("[[fail:503]]", "[[fail-times:2]]")}
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["metadata"]["model"] == "steady-chat"
    [row] = await app.rows(account)
    assert (row["model_id"], row["fallback_from"], row["status"]) == ("steady-chat", "falling-chat", "ok")
    assert statuses(row) == [("falling-chat", 503), ("falling-chat", 503), ("steady-chat", 200)]
    assert len(await app.charges(account)) == 1


async def test_a_stream_falls_back_before_its_first_byte(app: Resilient) -> None:
    account, token = await app.user()
    async with app.client(token) as http:
        reply = await http.post(
            "/v1/ai/stream", json={"model": "falling-chat", "prompt": prompt("[[fail:502]]", "[[fail-times:2]]")}
        )
    events = ui_events(reply.text)
    assert [e["type"] for e in events][-1] == "finish"
    assert events[-1]["messageMetadata"]["model"] == "steady-chat"
    [row] = await app.rows(account)
    assert (row["fallback_from"], statuses(row)[-1]) == ("falling-chat", ("steady-chat", 200))


async def test_a_stream_that_fails_after_its_first_byte_ends_with_an_error_event_and_no_fallback(
    app: Resilient,
) -> None:
    account, token = await app.user()
    async with app.client(token) as http:
        reply = await http.post(
            "/v1/ai/stream", json={"model": "falling-chat", "prompt": prompt("[[slow-stream:100]]", "[[drop:4]]")}
        )
    events = ui_events(reply.text)
    kinds = [e["type"] for e in events]
    assert "text-delta" in kinds and "finish" not in kinds
    assert kinds[-1] == "error"
    rows = await eventually(lambda: app.rows(account), lambda found: len(found) == 1)
    [row] = rows
    assert (row["model_id"], row["fallback_from"], row["status"]) == ("falling-chat", None, "cancelled")
    assert statuses(row) == [("falling-chat", 200)]
    assert row["charge_microcredits"] > 0
    assert await app.charges(account) == [row["charge_microcredits"]]


# --- circuit breaker ------------------------------------------------------------------------------------------


def fragile_breakers() -> list[dict[str, Any]]:
    return [r.breaker for r in provider_resilience() if r.provider == "fragile" and r.breaker is not None]


async def test_the_breaker_opens_after_k_failures_fails_fast_half_opens_and_closes(app: Resilient) -> None:
    account, token = await app.user()
    async with app.client(token) as http:
        for _ in range(spec.BREAKER_FAILURES):
            failed = await http.post("/v1/ai/text", json={"model": "fragile-alone", "prompt": prompt("[[fail:500]]")})
            assert failed.status_code == 502
        started = time.perf_counter()
        fast = await http.post("/v1/ai/text", json={"model": "fragile-alone", "prompt": prompt()})
        fast_s = time.perf_counter() - started
        assert (fast.status_code, fast.json()["error"]["type"]) == (503, "provider_unavailable")
        assert fast_s < spec.BREAKER_OPEN_S
        assert [b["state"] for b in await asyncio.to_thread(fragile_breakers)] == ["open"]

        fallen = await http.post("/v1/ai/text", json={"model": "fragile-chat", "prompt": prompt()})
        assert (fallen.status_code, fallen.json()["metadata"]["model"]) == (200, "steady-chat")

        async def probe() -> int:
            return (await http.post("/v1/ai/text", json={"model": "fragile-alone", "prompt": prompt()})).status_code

        assert await eventually(probe, lambda status: status == 200, timeout_s=30) == 200
    assert [b["state"] for b in await asyncio.to_thread(fragile_breakers)] == ["closed"]
    rows = await app.rows(account)
    assert [(r["model_id"], r["http_status"]) for r in rows[:4]] == [
        ("fragile-alone", 502),
        ("fragile-alone", 502),
        ("fragile-alone", 503),
        ("steady-chat", 200),
    ]
    assert statuses(rows[2]) == [("fragile-alone", 503)]


# --- timeouts ---------------------------------------------------------------------------------------------------


async def test_the_first_byte_timeout_is_a_504_naming_it(app: Resilient) -> None:
    _, token = await app.user()
    async with app.client(token) as http:
        reply = await http.post("/v1/ai/text", json={"model": "retrying-chat", "prompt": prompt("[[sleep:3000]]")})
    error = reply.json()["error"]
    assert (reply.status_code, error["type"]) == (504, "upstream_timeout")
    assert "first_byte timeout" in error["message"]


async def test_a_caller_shortens_the_total_timeout_with_a_header(app: Resilient) -> None:
    _, token = await app.user()
    async with app.client(token) as http:
        reply = await http.post(
            "/v1/ai/text",
            json={"model": "steady-chat", "prompt": prompt("[[sleep:3000]]")},
            headers={"X-Downcity-Timeout-Ms": "500"},
        )
    error = reply.json()["error"]
    assert (reply.status_code, error["type"]) == (504, "upstream_timeout")
    assert error["message"] == "the call ran past the caller's timeout (total timeout)"


async def test_the_total_timeout_ends_a_stream_with_an_error_event(app: Resilient) -> None:
    _, token = await app.user()
    async with app.client(token) as http:
        reply = await http.post(
            "/v1/ai/stream",
            json={"model": "steady-chat", "prompt": prompt("a b c d e f", "[[slow-stream:300]]"), "timeout_ms": 1000},
        )
    events = ui_events(reply.text)
    assert events[-1] == {
        "type": "error",
        "errorText": "upstream_timeout: the call ran past the caller's timeout (total timeout)",
    }


async def test_the_connect_timeout_is_a_504_naming_it(app: Resilient) -> None:
    _, token = await app.user()
    async with app.client(token) as http:
        reply = await http.post("/v1/ai/text", json={"model": "unreachable", "prompt": prompt()})
    error = reply.json()["error"]
    assert (reply.status_code, error["type"]) == (504, "upstream_timeout")
    assert "connect timeout" in error["message"]


async def test_a_bad_caller_timeout_is_a_4xx_naming_it(app: Resilient) -> None:
    _, token = await app.user()
    async with app.client(token) as http:
        header = await http.post(
            "/v1/ai/text", json={"model": "steady-chat", "prompt": "hi"}, headers={"X-Downcity-Timeout-Ms": "soon"}
        )
        body = await http.post("/v1/ai/text", json={"model": "steady-chat", "prompt": "hi", "timeout_ms": 0})
    assert (header.status_code, header.json()["error"]["field"]) == (400, "X-Downcity-Timeout-Ms")
    assert (body.status_code, body.json()["error"]["field"]) == (422, "timeout_ms")


# --- key pools --------------------------------------------------------------------------------------------------


async def test_a_rested_key_is_skipped_and_comes_back(app: Resilient) -> None:
    account, token = await app.user()
    async with app.client(token) as http:

        async def call() -> httpx.Response:
            return await http.post("/v1/ai/text", json={"model": "pooled-chat", "prompt": prompt()})

        first = [await call() for _ in range(2)]
        assert [r.status_code for r in first] == [200, 200]
        rows = await app.rows(account)
        assert [r["key_name"] for r in rows] == ["POOL_B_KEY", "POOL_B_KEY"]
        tried = [(a.get("key"), a["status"]) for r in rows for a in r["attempts"]]
        assert tried[:2] == [("POOL_A_KEY", 429), ("POOL_B_KEY", 200)]
        assert tried[2:] == [("POOL_B_KEY", 200)]

        async def attempted_keys() -> list[str | None]:
            await call()
            return [a.get("key") for a in (await app.rows(account))[-1]["attempts"]]

        assert await eventually(attempted_keys, lambda keys: keys == ["POOL_A_KEY", "POOL_B_KEY"]) == [
            "POOL_A_KEY",
            "POOL_B_KEY",
        ]

        rotated = await app.served.admin.post("/v1/env/set", json={"key": "POOL_A_KEY", "value": GOOD_KEY + "-2"})
        assert rotated.status_code == 200

        async def served_by() -> set[str]:
            await call()
            return {r["key_name"] for r in await app.rows(account)}

        assert await eventually(served_by, lambda keys: "POOL_A_KEY" in keys) == {"POOL_A_KEY", "POOL_B_KEY"}


# --- the official openai client -----------------------------------------------------------------------------


def chat(*markers: str, model: str = "retrying-chat") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt(*markers)}]}


async def test_openai_client_sees_one_answer_after_a_retried_500(app: Resilient) -> None:
    account, token = await app.user()
    client = app.openai(token)
    completion = await client.chat.completions.create(**chat("[[fail:500]]", "[[fail-times:1]]"))
    await client.close()
    assert completion.choices[0].message.content is not None
    [row] = await app.rows(account)
    assert statuses(row) == [("retrying-chat", 500), ("retrying-chat", 200)]
    assert len(await app.charges(account)) == 1


async def test_openai_client_gets_the_fallback_models_answer(app: Resilient) -> None:
    account, token = await app.user()
    client = app.openai(token)
    stream = await client.chat.completions.create(
        **chat("[[fail:503]]", "[[fail-times:2]]", model="falling-chat"), stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await client.close()
    assert text.startswith("Echo: hello")
    [row] = await app.rows(account)
    assert (row["model_id"], row["fallback_from"]) == ("steady-chat", "falling-chat")


async def test_openai_client_stream_ends_with_an_error_chunk_after_its_first_byte(app: Resilient) -> None:
    account, token = await app.user()
    client = app.openai(token)
    stream = await client.chat.completions.create(
        **chat("[[slow-stream:100]]", "[[drop:4]]", model="falling-chat"), stream=True
    )
    received = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            received.append(chunk)
    await client.close()
    assert received
    [row] = await eventually(lambda: app.rows(account), lambda found: len(found) == 1)
    assert (row["model_id"], row["fallback_from"], row["status"]) == ("falling-chat", None, "cancelled")


async def test_openai_client_sees_the_timeouts_by_name(app: Resilient) -> None:
    _, token = await app.user()
    client = app.openai(token)
    with pytest.raises(openai.APIStatusError) as timed_out:
        await client.chat.completions.create(**chat("[[sleep:3000]]"))
    with pytest.raises(openai.APIStatusError) as shortened:
        await client.chat.completions.create(
            **chat("[[sleep:3000]]", model="steady-chat"), extra_headers={"X-Downcity-Timeout-Ms": "300"}
        )
    await client.close()
    assert (timed_out.value.status_code, shortened.value.status_code) == (504, 504)
    assert "first_byte" in str(timed_out.value.body) and "total" in str(shortened.value.body)
