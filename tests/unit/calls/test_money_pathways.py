"""Money on the pathways the streaming tests leave out: video, a provider's own chat charge, OpenAI streams that fail
or replay, and replays of streams too long to store. In-process app over ASGI, the demo upstream, both databases."""

from __future__ import annotations

import json
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
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.store.schema import usage_records
from downcity.types import ChargeDraft
from examples.federation import LocalTools, reverse_hold

ADMIN_KEY = "test-admin"
CITY = "shop"
CREDIT = 100_000
CHAT_PRICE = 700
BIG_PRICE = 50
# One byte more than a stream's replay store keeps (downcity.calls.lifecycle.MAX_STORED_STREAM_BYTES).
BIG_TEXT = "x" * (4 * 1024 * 1024 + 1)


class Upstream(Provider):
    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)


class Tools(LocalTools):
    """The example's reverse tools, plus a chat/completions handler that sets its own charge."""

    async def openai(self, ctx: Context) -> dict[str, Any]:
        ctx.metering.set_charge(ChargeDraft(amount_microcredits=CHAT_PRICE, note="own chat"))
        reply = self.extract_prompt(ctx.input)[::-1]
        return {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
        }


class Big(Provider):
    """Streams one answer longer than a replay can store, on both stream pathways."""

    async def stream(self, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "text-start", "id": "t0"}
        yield {"type": "text-delta", "id": "t0", "delta": BIG_TEXT}
        yield {"type": "text-end", "id": "t0"}

    async def openai(self, ctx: Context) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            delta = {"choices": [{"index": 0, "delta": {"content": BIG_TEXT}}]}
            yield b"data: " + json.dumps(delta).encode() + b"\n\ndata: [DONE]\n\n"

        return chunks()


def _per_token(ctx: Context, output: Any) -> ChargeDraft:
    usage = ctx.metering.usage
    return ChargeDraft(amount_microcredits=usage.input_tokens + 2 * usage.output_tokens)


def _big_price(ctx: Context, output: Any) -> ChargeDraft:
    return ChargeDraft(amount_microcredits=BIG_PRICE)


def _federation(upstream_url: str) -> Federation:
    tools = Tools("tools")
    upstream = Upstream("up", env_key="UP_KEY", base_url=upstream_url)
    ai = (
        AIService()
        .use(tools.model("reverse", default="video", hold_microcredits=reverse_hold))
        .use(tools.model("own-chat", hold_microcredits=CHAT_PRICE))
        .use(upstream.model("tokens", default=("text", "stream", "openai"), bill=_per_token, hold_microcredits=5_000))
        .use(Big("big").model("big", bill=_big_price, hold_microcredits=BIG_PRICE))
    )
    return Federation(name="pathways").use(ai)


@dataclass
class App:
    runtime: Runtime
    http: httpx.AsyncClient
    token: str

    def user(self, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        return {**headers, "Idempotency-Key": key} if key is not None else headers

    async def balance(self) -> tuple[int, int]:
        value = await self.runtime.ledger.balance(f"{CITY}/u1")
        return value.balance, value.held

    async def usage(self) -> list[tuple[Any, ...]]:
        """(pathway, model, status, http_status, usage_source, input, output, charge) of every usage row."""
        async with self.runtime.db.connect() as conn:
            rows = await conn.execute(select(usage_records).order_by(usage_records.c.created_at_ms))
            return [
                (
                    r.pathway,
                    r.model_id,
                    r.status,
                    r.http_status,
                    r.usage_source,
                    r.input_tokens,
                    r.output_tokens,
                    r.charge_microcredits,
                )
                for r in rows
            ]


@pytest.fixture
async def app(database_url: str, tmp_path: Path, demo_upstream: str) -> AsyncIterator[App]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    runtime = await open_local_runtime(_federation(demo_upstream), settings)
    await runtime.env_store.set("UP_KEY", f"k-{uuid.uuid4().hex}")
    await runtime.cities.create("Shop", city_id=CITY)
    await runtime.refresh()
    await runtime.ledger.credit("seed", f"{CITY}/u1", CREDIT)
    issued = await runtime.security.issuer.apply(CITY, "u1")
    transport = httpx.ASGITransport(app=create_app(runtime, manage_runtime=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://downcity.test", timeout=30) as http:
        yield App(runtime, http, issued.user_token)
    await runtime.stop()


def _chat(content: str, *, model: str = "tokens", stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


async def test_a_video_is_charged_its_actions_charge_and_a_replay_costs_nothing_more(app: App) -> None:
    body = {"model": "reverse", "prompt": "ab cd ef"}

    first = await app.http.post("/v1/ai/video", json=body, headers=app.user("v-1"))
    replay = await app.http.post("/v1/ai/video", json=body, headers=app.user("v-1"))

    assert first.status_code == 200, first.text
    assert (first.json()["frames"], first.json()["metadata"]["charge"]["amount_microcredits"]) == (
        ["fe", "dc", "ba"],
        3 * 1_000,
    )
    assert (replay.status_code, replay.json(), replay.headers["idempotent-replayed"]) == (200, first.json(), "true")
    assert await app.balance() == (CREDIT - 3 * 1_000, 0)
    assert await app.usage() == [("video", "reverse", "ok", 200, "upstream", 0, 0, 3 * 1_000)]


async def test_a_video_key_reused_with_another_body_is_a_409_that_costs_nothing(app: App) -> None:
    await app.http.post("/v1/ai/video", json={"model": "reverse", "prompt": "ab"}, headers=app.user("v-2"))

    other = await app.http.post("/v1/ai/video", json={"model": "reverse", "prompt": "cd"}, headers=app.user("v-2"))

    assert (other.status_code, other.json()["error"]["type"]) == (409, "idempotency_conflict")
    assert await app.balance() == (CREDIT - 1_000, 0)


async def test_a_providers_own_chat_is_charged_the_charge_it_set(app: App) -> None:
    response = await app.http.post("/v1/ai/chat/completions", json=_chat("abc", model="own-chat"), headers=app.user())

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "cba"
    assert await app.balance() == (CREDIT - CHAT_PRICE, 0)
    assert [row[:3] + row[-1:] for row in await app.usage()] == [("openai", "own-chat", "ok", CHAT_PRICE)]


async def test_a_chat_key_reused_with_another_body_is_a_409_before_any_work(app: App) -> None:
    await app.http.post("/v1/ai/chat/completions", json=_chat("a"), headers=app.user("c-1"))

    other = await app.http.post("/v1/ai/chat/completions", json=_chat("b"), headers=app.user("c-1"))

    assert (other.status_code, other.json()["error"]["type"]) == (409, "idempotency_conflict")
    # "a" in, "Echo: a" out: 1 + 2 * 2.
    assert await app.balance() == (CREDIT - 5, 0)


async def test_a_replayed_openai_stream_returns_the_same_bytes_and_costs_nothing_more(app: App) -> None:
    body = _chat("stream me", stream=True)

    first = await app.http.post("/v1/ai/chat/completions", json=body, headers=app.user("os-1"))
    replay = await app.http.post("/v1/ai/chat/completions", json=body, headers=app.user("os-1"))

    assert (first.status_code, replay.status_code, replay.content) == (200, 200, first.content)
    assert first.content.endswith(b"data: [DONE]\n\n")
    # "stream me" in, "Echo: stream me" out: 2 + 2 * 3.
    assert await app.balance() == (CREDIT - 8, 0)
    assert len(await app.usage()) == 1


async def test_an_openai_stream_cut_off_mid_stream_ends_with_an_error_event_and_bills_what_it_delivered(
    app: App,
) -> None:
    response = await app.http.post(
        "/v1/ai/chat/completions", json=_chat("a b c d [[drop]]", stream=True), headers=app.user()
    )

    events = response.content.split(b"\n\n")
    assert events[-2:] == [
        b'data: {"error":{"type":"upstream_unavailable","message":"could not reach the upstream (ReadError)"}}',
        b"",
    ]
    assert b"[DONE]" not in response.content
    delivered = "".join(
        chunk["choices"][0]["delta"].get("content", "")
        for chunk in (json.loads(event.removeprefix(b"data: ")) for event in events[:-2])
    )
    assert delivered == "Echo: "
    # No upstream usage arrived: tokens metered from the prompt and the delivered "Echo: ", priced 1 + 2.
    assert await app.usage() == [("openai", "tokens", "cancelled", 502, "estimated", 14, 3, 14 + 2 * 3)]
    assert await app.balance() == (CREDIT - (14 + 2 * 3), 0)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/ai/stream", {"model": "big", "prompt": "long"}),
        ("/v1/ai/chat/completions", _chat("long", model="big", stream=True)),
    ],
    ids=["ui", "openai"],
)
async def test_a_stream_too_long_to_store_is_charged_once_and_its_replay_is_refused_naming_the_header(
    app: App, path: str, body: dict[str, Any]
) -> None:
    first = await app.http.post(path, json=body, headers=app.user("long-1"))
    replay = await app.http.post(path, json=body, headers=app.user("long-1"))

    assert (first.status_code, BIG_TEXT.encode() in first.content) == (200, True)
    assert (replay.status_code, replay.json()) == (
        409,
        {
            "error": {
                "type": "idempotency_stream_replay",
                "message": "the stream with this Idempotency-Key was too long to store; use a new key",
                "field": "Idempotency-Key",
            }
        },
    )
    assert await app.balance() == (CREDIT - BIG_PRICE, 0)


async def test_a_ui_stream_shows_the_call_id_and_text_but_never_the_usage_report(app: App) -> None:
    response = await app.http.post("/v1/ai/stream", json={"model": "tokens", "prompt": "one two"}, headers=app.user())

    events = [event.removeprefix(b"data: ") for event in response.content.split(b"\n\n") if event]
    chunks = [json.loads(event) for event in events[:-1]]
    async with app.runtime.db.connect() as conn:
        [request_id] = (await conn.execute(select(usage_records.c.request_id))).scalars()
    assert (events[-1], chunks[0]) == (b"[DONE]", {"type": "start", "messageId": request_id})
    assert [chunk["type"] for chunk in chunks] == ["start", "text-start", *["text-delta"] * 3, "text-end", "finish"]
    assert chunks[-1]["messageMetadata"]["usage"] == {
        "input_tokens": 2,
        "output_tokens": 3,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "images": 0,
        "seconds": 0,
    }
    assert await app.balance() == (CREDIT - (2 + 2 * 3), 0)
