"""The AI endpoints end to end: real Ray cluster, Serve app, HTTP, PostgreSQL and the demo upstream."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import select

from downcity.store import Database
from downcity.store.schema import usage_records
from tests.integration.conftest import ServedApp

pytestmark = pytest.mark.ray


def user_client(app: ServedApp, token: str, city_id: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"}
    if city_id:
        headers["X-City-Id"] = city_id
    return httpx.AsyncClient(base_url=app.url, headers=headers, timeout=30)


async def usage_rows(app: ServedApp, user_id: str) -> list[dict[str, object]]:
    db = Database(app.database_url)
    try:
        async with db.connect() as conn:
            rows = await conn.execute(
                select(usage_records).where(usage_records.c.user_id == user_id).order_by(usage_records.c.created_at_ms)
            )
            return [dict(row._mapping) for row in rows]
    finally:
        await db.dispose()


def sse_events(body: str) -> list[str]:
    return [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]


async def test_health_reports_the_federation(served: ServedApp) -> None:
    response = await served.admin.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "federation": "example", "models": 5}


async def test_models_lists_public_fields_only(served: ServedApp) -> None:
    _, _, token = await served.new_user()
    async with user_client(served, token) as client:
        response = await client.get("/v1/ai/models")
    assert response.status_code == 200
    items = {item["id"]: item for item in response.json()["items"]}
    assert set(items) == {"deepseek-chat", "deepseek-vl", "deepseek-flat", "reverse", "deepseek-image"}
    assert "base_url" not in json.dumps(items)
    assert items["deepseek-chat"]["default_for"] == ["text", "stream", "openai"]


async def test_text_uses_the_default_model_and_bills_tokens(served: ServedApp) -> None:
    city_id, user_id, token = await served.new_user(credit=100_000)
    async with user_client(served, token, city_id) as client:
        response = await client.post("/v1/ai/text", json={"prompt": "hello there world"})
        balance = await client.get("/v1/balance/me")
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["role"] == "assistant"
    assert message["parts"][0]["text"] == "Echo: hello there world"
    assert message["metadata"]["model"] == "deepseek-chat"
    assert message["metadata"]["usage"]["input_tokens"] == 3
    assert message["metadata"]["usage"]["output_tokens"] == 4
    assert message["metadata"]["charge"]["amount_microcredits"] == 3 + 3 * 4
    assert balance.json()["balance"] == 100_000 - 15
    rows = await usage_rows(served, user_id)
    assert [(r["pathway"], r["status"], r["model_id"], r["charge_microcredits"]) for r in rows] == [
        ("text", "ok", "deepseek-chat", 15)
    ]


async def test_stream_speaks_the_ui_message_protocol_and_records_usage(served: ServedApp) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/stream", json={"prompt": "one two"})
    assert response.status_code == 200
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["type"] == "start"
    assert chunks[-1]["type"] == "finish"
    text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    assert text == "Echo: one two"
    assert chunks[-1]["messageMetadata"]["usage"]["input_tokens"] == 2
    assert chunks[-1]["messageMetadata"]["usage"]["output_tokens"] == 3
    rows = await usage_rows(served, user_id)
    assert [(r["pathway"], r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [
        ("stream", "ok", 2, 3)
    ]


async def test_custom_text_provider_charge_is_applied(served: ServedApp) -> None:
    _, _, token = await served.new_user(credit=1_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", json={"model": "reverse", "prompt": "abc"})
        balance = await client.get("/v1/balance/me")
    assert response.status_code == 200, response.text
    assert response.json()["parts"][0]["text"] == "cba"
    assert response.json()["metadata"]["charge"]["amount_microcredits"] == 30
    assert balance.json()["balance"] == 970


async def test_custom_stream_provider(served: ServedApp) -> None:
    _, _, token = await served.new_user(credit=10_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/stream", json={"model": "reverse", "prompt": "ab cd"})
    chunks = [json.loads(e) for e in sse_events(response.text)[:-1]]
    assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == "dc ba"


async def test_image_part_falls_back_to_the_vision_model(served: ServedApp) -> None:
    _, user_id, token = await served.new_user(credit=100_000, metadata={"plan": "pro"})
    messages = [
        {
            "role": "user",
            "parts": [
                {"type": "text", "text": "what is this"},
                {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AAAA"},
            ],
        }
    ]
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", json={"messages": messages})
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["model"] == "deepseek-vl"
    rows = await usage_rows(served, user_id)
    assert [(r["model_id"], r["fallback_from"]) for r in rows] == [("deepseek-vl", "deepseek-chat")]


async def test_hook_denies_premium_model_on_free_plan_with_402(served: ServedApp) -> None:
    _, _, token = await served.new_user(credit=100_000, metadata={"plan": "free"})
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", json={"model": "deepseek-vl", "prompt": "hi"})
    assert response.status_code == 402
    assert response.json()["error"]["type"] == "upgrade_required"


async def test_hook_denies_exhausted_quota_with_429(served: ServedApp) -> None:
    _, _, token = await served.new_user(credit=100_000, metadata={"quota_exceeded": True})
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", json={"prompt": "hi"})
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "quota_exceeded"


async def test_hook_rewrites_input_for_the_kids_city(served: ServedApp) -> None:
    existing = await served.admin.post("/v1/cities/create", json={"name": "Kids", "city_id": "kids"})
    assert existing.status_code in (200, 409)
    _, _, token = await served.new_user(city_id="kids", credit=100_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", json={"prompt": "why is the sky blue"})
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["usage"]["input_tokens"] == len(
        ["Answer", "kindly", "and", "simply.", "why", "is", "the", "sky", "blue"]
    )


async def test_paused_city_is_refused_and_activation_restores_it(served: ServedApp) -> None:
    city_id, _, token = await served.new_user(credit=100_000)
    paused = await served.admin.post("/v1/cities/pause", json={"city_id": city_id})
    assert paused.json()["status"] == "paused"
    import asyncio

    async with user_client(served, token) as client:
        await asyncio.sleep(2.0)
        refused = await client.post("/v1/ai/text", json={"prompt": "hi"})
        await served.admin.post("/v1/cities/activate", json={"city_id": city_id})
        await asyncio.sleep(2.0)
        accepted = await client.post("/v1/ai/text", json={"prompt": "hi"})
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "city_paused"
    assert accepted.status_code == 200


async def test_wrong_city_header_is_refused(served: ServedApp) -> None:
    _, _, token = await served.new_user()
    async with user_client(served, token, city_id="someone-else") as client:
        response = await client.post("/v1/ai/text", json={"model": "reverse", "prompt": "hi"})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "city_mismatch"


@pytest.mark.parametrize(
    ("marker", "status", "error_type"),
    [("[[fail:500]]", 502, "upstream_error"), ("[[malformed]]", 502, "upstream_malformed")],
)
async def test_upstream_failures_map_to_json_errors_and_release_the_hold(
    served: ServedApp, marker: str, status: int, error_type: str
) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", json={"prompt": f"hi {marker}"})
        balance = await client.get("/v1/balance/me")
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    assert (balance.json()["balance"], balance.json()["held"]) == (100_000, 0)
    rows = await usage_rows(served, user_id)
    assert [(r["status"], r["http_status"], r["error_type"]) for r in rows] == [("error", status, error_type)]


async def test_failure_mid_stream_ends_with_an_error_event_not_a_finish(served: ServedApp) -> None:
    _, _, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/stream", json={"prompt": "a b c d [[malformed]]"})
    events = sse_events(response.text)
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    assert "[DONE]" not in events
    assert chunks[-1]["type"] == "error"
    assert all(c["type"] != "finish" for c in chunks)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"prompt": 5}',
        b'{"prompt": "x", "temperature": "hot"}',
        b'{"prompt": "x", "model": "no-such-model"}',
        b"{}",
    ],
)
async def test_bad_input_gets_a_4xx_json_error(served: ServedApp, body: bytes) -> None:
    _, _, token = await served.new_user()
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert set(response.json()["error"]) >= {"type", "message"}


async def test_oversized_body_gets_413(served: ServedApp) -> None:
    _, _, token = await served.new_user()
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", json={"prompt": "x" * (5 * 1024 * 1024)})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"


async def test_bad_tokens_get_401(served: ServedApp) -> None:
    _, _, token = await served.new_user()
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    for credential in ("garbage", tampered):
        async with user_client(served, credential) as client:
            response = await client.post("/v1/ai/text", json={"prompt": "hi"})
        assert response.status_code == 401
    async with httpx.AsyncClient(base_url=served.url) as anonymous:
        response = await anonymous.post("/v1/ai/text", json={"prompt": "hi"})
    assert response.status_code == 401
