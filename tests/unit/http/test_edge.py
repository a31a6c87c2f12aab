"""The edge rule: NUL, lone surrogates, NaN/Infinity, 64-bit overflow and deep nesting get a 422 naming the field,
before any upstream call or database write, on every route and on both databases."""

from __future__ import annotations

import pytest

from downcity.store.values import MAX_JSON_DEPTH
from tests.unit.http.fakes import App, row_counts

JSON = {"content-type": "application/json"}

# (caller, method, path, raw JSON body or None, the field the 422 names, its message)
REFUSED = [
    ("user", "POST", "/v1/ai/text", r'{"prompt": "a\u0000b"}', "prompt", "must not contain U+0000"),
    ("user", "POST", "/v1/ai/stream", r'{"prompt": "a\ud800b"}', "prompt", "must not contain a lone surrogate"),
    (
        "user",
        "POST",
        "/v1/ai/text",
        '{"prompt": "hi", "top_p": NaN}',
        "top_p",
        "numbers must be finite (no NaN or Infinity)",
    ),
    (
        "user",
        "POST",
        "/v1/ai/chat/completions",
        '{"messages": [{"role": "user", "content": "hi"}], "seed": Infinity}',
        "seed",
        "numbers must be finite (no NaN or Infinity)",
    ),
    (
        "user",
        "POST",
        "/v1/ai/chat/completions",
        '{"messages": [{"role": "user", "content": "hi"}], "seed": 1e400}',
        "seed",
        "numbers must be finite (no NaN or Infinity)",
    ),
    (
        "user",
        "POST",
        "/v1/ai/chat/completions",
        '{"messages": [{"role": "user", "content": "hi"}], "seed": 9223372036854775808}',
        "seed",
        "integers must fit in a signed 64-bit integer",
    ),
    ("user", "POST", "/v1/ai/image/create", r'{"prompt": "a\u0000"}', "prompt", "must not contain U+0000"),
    (
        "user",
        "POST",
        "/v1/ai/image/create",
        '{"prompt": "a", "strength": NaN}',
        "strength",
        "numbers must be finite (no NaN or Infinity)",
    ),
    ("user", "POST", "/v1/ai/image/result", r'{"job_id": "job\u0000"}', "job_id", "must not contain U+0000"),
    (
        "user",
        "POST",
        "/v1/ai/text",
        r'{"prompt": "hi", "metadata": {"k\u0000": 1}}',
        "metadata (a key)",
        "must not contain U+0000",
    ),
    ("user", "GET", "/v1/usage/me?model=a%00", None, "model", "must not contain U+0000"),
    ("admin", "GET", "/v1/usage/list?user_id=a%00", None, "user_id", "must not contain U+0000"),
    ("admin", "GET", "/v1/usage/summary?city_id=%00", None, "city_id", "must not contain U+0000"),
    ("admin", "GET", "/v1/jobs/list?user_id=a%00", None, "user_id", "must not contain U+0000"),
    ("admin", "POST", "/v1/cities/create", r'{"name": "Bad\u0000City"}', "name", "must not contain U+0000"),
    ("admin", "POST", "/v1/cities/pause", r'{"city_id": "acme\u0000"}', "city_id", "must not contain U+0000"),
    (
        "admin",
        "POST",
        "/v1/tokens/apply",
        r'{"city_id": "acme\u0000", "user_id": "bob"}',
        "city_id",
        "must not contain U+0000",
    ),
    (
        "admin",
        "POST",
        "/v1/tokens/apply",
        r'{"city_id": "acme", "user_id": "bob", "metadata": {"plan": "pro\u0000"}}',
        "metadata.plan",
        "must not contain U+0000",
    ),
    ("admin", "POST", "/v1/tokens/revoke", r'{"user_id": "bob\udfff"}', "user_id", "must not contain a lone surrogate"),
    ("admin", "POST", "/v1/env/set", r'{"key": "OTHER_KEY", "value": "sk-\u0000"}', "value", "must not contain U+0000"),
    (
        "admin",
        "POST",
        "/v1/balance/credit",
        r'{"city_id": "acme", "user_id": "alice", "amount_microcredits": 5, "idempotency_key": "k", "note": "\u0000"}',
        "note",
        "must not contain U+0000",
    ),
]


@pytest.mark.parametrize(("caller", "method", "path", "body", "field", "message"), REFUSED)
async def test_bad_strings_and_numbers_get_a_422_naming_the_field_before_any_work(
    shared_app: App, caller: str, method: str, path: str, body: str | None, field: str, message: str
) -> None:
    before = await row_counts(shared_app.runtime)
    async with shared_app.user() if caller == "user" else shared_app.admin() as client:
        response = await client.request(method, path, content=body, headers=JSON)

    assert response.status_code == 422
    assert response.json() == {"error": {"type": "invalid_request", "message": f"{field}: {message}", "field": field}}
    assert shared_app.upstream.calls == []
    assert shared_app.upstream.image_calls == 0
    assert await row_counts(shared_app.runtime) == before


def _nested(depth: int) -> str:
    return '{"prompt": "hi", "extra": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


async def test_nesting_one_level_past_the_limit_is_refused_naming_the_deepest_field(app: App) -> None:
    async with app.user() as client:
        response = await client.post("/v1/ai/text", content=_nested(MAX_JSON_DEPTH + 1), headers=JSON)

    field = "extra" + "[0]" * (MAX_JSON_DEPTH - 1)
    assert response.status_code == 422
    assert response.json()["error"] == {
        "type": "invalid_request",
        "message": f"{field}: JSON nesting exceeds {MAX_JSON_DEPTH} levels",
        "field": field,
    }
    assert app.upstream.calls == []


async def test_nesting_at_the_limit_is_accepted(app: App) -> None:
    async with app.user() as client:
        response = await client.post("/v1/ai/text", content=_nested(MAX_JSON_DEPTH), headers=JSON)

    assert response.status_code == 200
    assert len(app.upstream.calls) == 1
    assert len(app.upstream.calls) == 1


async def test_nesting_too_deep_for_the_json_parser_is_a_422_not_a_500(app: App) -> None:
    async with app.user() as client:
        response = await client.post("/v1/ai/text", content=_nested(100_000), headers=JSON)

    assert response.status_code == 422
    assert response.json()["error"] == {
        "type": "invalid_request",
        "message": f"body: JSON nesting exceeds {MAX_JSON_DEPTH} levels",
        "field": "body",
    }


async def test_a_nul_in_the_idempotency_key_header_is_refused_before_the_upstream(app: App) -> None:
    async with app.user() as client:
        response = await client.post("/v1/ai/text", json={"prompt": "hi"}, headers={"Idempotency-Key": "k\x00"})

    assert response.status_code == 422
    assert response.json()["error"] == {
        "type": "invalid_request",
        "message": "Idempotency-Key: must not contain U+0000",
        "field": "Idempotency-Key",
    }
    assert app.upstream.calls == []


async def test_a_body_that_is_not_json_is_a_400(app: App) -> None:
    async with app.user() as client:
        response = await client.post("/v1/ai/text", content=b'{"prompt": ', headers=JSON)

    assert response.status_code == 400
    assert response.json() == {"error": {"type": "malformed_json", "message": "request body is not valid JSON"}}
