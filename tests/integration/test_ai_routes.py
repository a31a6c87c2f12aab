"""The AI endpoints end to end: real Ray cluster, Serve app, HTTP, PostgreSQL and the demo upstream."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import select

from downcity.store import Database
from downcity.store.schema import usage_records
from tests.integration.conftest import ServedApp, eventually

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


async def balance_of(client: httpx.AsyncClient) -> tuple[int, int]:
    """The caller's (balance, held) in microcredits."""
    response = await client.get("/v1/balance/me")
    assert response.status_code == 200, response.text
    return response.json()["balance"], response.json()["held"]


async def upstream_chat_calls(demo_upstream: str) -> int:
    """How many chat completions the session's demo upstream has received (its request log keeps the last 1,000)."""
    root = demo_upstream.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=10) as http:
        items = (await http.get(f"{root}/_demo/requests")).json()["items"]
    return sum(1 for item in items if item["path"] == "/v1/chat/completions")


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


async def test_a_stream_is_charged_per_token_once_it_finishes(served: ServedApp) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/stream", json={"prompt": "one two"})
        balance = await balance_of(client)
    finish = json.loads(sse_events(response.text)[-2])
    assert finish["messageMetadata"]["charge"]["amount_microcredits"] == 2 + 3 * 3
    assert balance == (100_000 - (2 + 3 * 3), 0)
    rows = await usage_rows(served, user_id)
    assert [(r["status"], r["charge_microcredits"]) for r in rows] == [("ok", 2 + 3 * 3)]


async def test_a_stream_on_a_flat_priced_model_is_charged_the_flat_price(served: ServedApp) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/stream", json={"model": "deepseek-flat", "prompt": "one two"})
        balance = await balance_of(client)
    assert response.status_code == 200, response.text
    finish = json.loads(sse_events(response.text)[-2])
    assert finish["messageMetadata"]["charge"]["amount_microcredits"] == 500
    assert balance == (100_000 - 500, 0)
    rows = await usage_rows(served, user_id)
    assert [(r["model_id"], r["status"], r["charge_microcredits"]) for r in rows] == [("deepseek-flat", "ok", 500)]


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


async def test_hook_denies_premium_model_on_free_plan_with_402_at_no_cost(
    served: ServedApp, demo_upstream: str
) -> None:
    _, user_id, token = await served.new_user(credit=100_000, metadata={"plan": "free"})
    before = await upstream_chat_calls(demo_upstream)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", json={"model": "deepseek-vl", "prompt": "hi"})
        assert await upstream_chat_calls(demo_upstream) == before
        balance = await balance_of(client)
        allowed = await client.post("/v1/ai/text", json={"model": "deepseek-chat", "prompt": "hi"})
    assert response.status_code == 402
    assert response.json()["error"] == {"type": "upgrade_required", "message": "the free plan cannot use deepseek-vl"}
    assert balance == (100_000, 0)
    # The same user's allowed call is counted, so the count above saw the upstream.
    assert (allowed.status_code, await upstream_chat_calls(demo_upstream)) == (200, before + 1)
    rows = await usage_rows(served, user_id)
    assert sorted((r["model_id"], r["status"], r["http_status"], r["charge_microcredits"]) for r in rows) == [
        ("deepseek-chat", "ok", 200, 1 + 3 * 2),
        ("deepseek-vl", "refused", 402, 0),
    ]


async def test_hook_denies_exhausted_quota_with_429_at_no_cost(served: ServedApp, demo_upstream: str) -> None:
    _, user_id, token = await served.new_user(credit=100_000, metadata={"quota_exceeded": True})
    before = await upstream_chat_calls(demo_upstream)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", json={"prompt": "hi"})
        streamed = await client.post("/v1/ai/stream", json={"prompt": "hi"})
        balance = await balance_of(client)
    assert (response.status_code, streamed.status_code) == (429, 429)
    assert response.json()["error"] == {"type": "quota_exceeded", "message": "this user's quota is used up"}
    assert balance == (100_000, 0)
    assert await upstream_chat_calls(demo_upstream) == before
    rows = await usage_rows(served, user_id)
    assert sorted((r["pathway"], r["status"], r["charge_microcredits"]) for r in rows) == [
        ("stream", "refused", 0),
        ("text", "refused", 0),
    ]


async def test_hook_rewrites_input_for_the_kids_city(served: ServedApp) -> None:
    # The example's system prompt is keyed by the city id "kids": only this test creates it in the session's database.
    created = await served.admin.post("/v1/cities/create", json={"name": "Kids", "city_id": "kids"})
    assert created.status_code == 200, created.text
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

    async with user_client(served, token) as client:

        async def call() -> httpx.Response:
            return await client.post("/v1/ai/text", json={"model": "reverse", "prompt": "hi"})

        # Ingress replicas learn of the pause on their next city refresh.
        refused = await eventually(call, lambda response: response.status_code != 200)
        activated = await served.admin.post("/v1/cities/activate", json={"city_id": city_id})
        accepted = await eventually(call, lambda response: response.status_code != 403)
    assert (refused.status_code, refused.json()["error"]["type"]) == (403, "city_paused")
    assert activated.json()["status"] == "active"
    assert (accepted.status_code, accepted.json()["parts"][0]["text"]) == (200, "ih")


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
    assert chunks[-1] == {
        "type": "error",
        "errorText": "upstream_malformed: the upstream sent a stream event that is not JSON",
    }
    assert all(c["type"] != "finish" for c in chunks)


async def test_failure_mid_stream_bills_what_was_delivered_and_releases_the_rest_of_the_hold(
    served: ServedApp,
) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/stream", json={"prompt": "a b c d [[malformed]]"})
        balance = await balance_of(client)
    delivered = "".join(c["delta"] for c in map(json.loads, sse_events(response.text)) if c["type"] == "text-delta")
    assert delivered == "Echo: "
    rows = await usage_rows(served, user_id)
    # No upstream usage arrived: tokens are metered from the prompt and the delivered "Echo: ", priced 1 + 3.
    assert [
        (r["status"], r["http_status"], r["usage_source"], r["input_tokens"], r["output_tokens"]) for r in rows
    ] == [("cancelled", 502, "estimated", 15, 3)]
    assert rows[0]["charge_microcredits"] == 15 + 3 * 3
    assert balance == (100_000 - (15 + 3 * 3), 0)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, {"type": "malformed_json", "message": "request body is not valid JSON"}),
        (b"[1, 2]", 422, {"type": "invalid_request", "message": "request body must be a JSON object"}),
        (
            b'{"prompt": 5}',
            422,
            {"type": "invalid_request", "message": "prompt: Input should be a valid string", "field": "prompt"},
        ),
        (
            b'{"prompt": "x", "temperature": "hot"}',
            422,
            {
                "type": "invalid_request",
                "message": "temperature: Input should be a valid number, unable to parse string as a number",
                "field": "temperature",
            },
        ),
        (
            b'{"prompt": "x", "model": "no-such-model"}',
            422,
            {"type": "unknown_model", "message": "unknown model 'no-such-model'", "field": "model"},
        ),
        (
            b"{}",
            422,
            {"type": "invalid_request", "message": "give exactly one of 'prompt' or 'messages'", "field": "prompt"},
        ),
    ],
)
async def test_bad_input_gets_a_4xx_json_error_naming_the_field(
    served: ServedApp, body: bytes, status: int, error: dict[str, str]
) -> None:
    _, _, token = await served.new_user()
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (status, {"error": error})


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
