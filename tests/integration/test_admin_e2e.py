"""The admin surface end to end: real cluster, Serve app, HTTP, PostgreSQL, the Python clients and the demo upstream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from downcity.client import AsyncAdminClient, AsyncUserClient, DowncityError
from downcity.store import Database
from downcity.store.schema import env as env_table
from tests.conftest import TEST_ADMIN_KEY
from tests.integration.conftest import ServedApp, eventually

pytestmark = pytest.mark.ray

SERVED_KEY = "sk-example-key-123456"
USER_OR_PUBLIC_PATHS = {"/health", "/ready", "/.well-known/jwks.json", "/v1/balance/me", "/v1/usage/me"}


@pytest.fixture
async def admin(served: ServedApp) -> AsyncIterator[AsyncAdminClient]:
    async with AsyncAdminClient(served.url, admin_key=TEST_ADMIN_KEY) as client:
        yield client


def user(served: ServedApp, city_id: str, token: str) -> AsyncUserClient:
    return AsyncUserClient(served.url, city_id=city_id, user_token=token, retries=0)


async def status_of(call: Awaitable[object]) -> int:
    try:
        await call
    except DowncityError as error:
        return error.status
    return 200


async def test_seed_flow_token_from_the_backend_reaches_hooks_as_metadata(
    served: ServedApp, admin: AsyncAdminClient
) -> None:
    city = await admin.cities.create("Seed web app")
    user_id = f"u{uuid.uuid4().hex[:10]}"
    await admin.balance.credit(city.city_id, user_id, 100_000, f"seed-{user_id}")
    pro = await admin.tokens.apply(city_id=city.city_id, user_id=user_id, metadata={"plan": "pro"})
    free = await admin.tokens.apply(city_id=city.city_id, user_id=user_id, metadata={"plan": "free"})
    async with user(served, city.city_id, pro.user_token) as client:
        reply = await client.ai.text("look closer", model="deepseek-vl")
    async with user(served, city.city_id, free.user_token) as client:
        with pytest.raises(DowncityError) as refused:
            await client.ai.text("look closer", model="deepseek-vl")
    assert (city.status, pro.city_id, pro.user_id) == ("active", city.city_id, user_id)
    assert reply.parts[0].text == "Echo: look closer"  # type: ignore[union-attr]
    assert (refused.value.status, refused.value.type) == (402, "upgrade_required")


@pytest.mark.parametrize(
    ("body", "status", "error_type", "field"),
    [
        ({"city_id": "no-such-city", "user_id": "u"}, 404, "city_not_found", "city_id"),
        ({"user_id": "u", "ttl": 0}, 422, "invalid_request", "ttl"),
        ({"user_id": "u", "ttl": "1h"}, 422, "invalid_request", "ttl"),
        ({"user_id": "u", "metadata": ["plan", "pro"]}, 422, "invalid_request", "metadata"),
    ],
)
async def test_token_apply_refusals_name_their_field(
    served: ServedApp, body: dict[str, object], status: int, error_type: str, field: str
) -> None:
    city_id, _, _ = await served.new_user()
    response = await served.admin.post("/v1/tokens/apply", json={"city_id": city_id, **body})
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    assert response.json()["error"]["field"] == field


async def test_token_apply_for_a_paused_city_is_403(served: ServedApp, admin: AsyncAdminClient) -> None:
    city = await admin.cities.create("Paused app")
    await admin.cities.pause(city.city_id)
    with pytest.raises(DowncityError) as refused:
        await admin.tokens.apply(city_id=city.city_id, user_id="u1")
    assert (refused.value.status, refused.value.type, refused.value.field) == (403, "city_paused", "city_id")


async def test_pause_refuses_calls_and_activate_accepts_them_again(served: ServedApp, admin: AsyncAdminClient) -> None:
    city_id, _, token = await served.new_user(credit=100_000)
    async with user(served, city_id, token) as client:

        async def call_status() -> int:
            return await status_of(client.ai.text("ping", model="reverse"))

        before = await call_status()
        await admin.cities.pause(city_id)
        # Replicas learn of a pause on their next city refresh (each second); how soon is bench material.
        refused = await eventually(call_status, lambda status: status != 200)
        await admin.cities.activate(city_id)
        accepted = await eventually(call_status, lambda status: status != 403)
    assert (before, refused, accepted) == (200, 403, 200)


async def _last_upstream_key(http: httpx.AsyncClient, root: str) -> str:
    items = (await http.get(f"{root}/_demo/requests")).json()["items"]
    return str([item for item in items if item["path"] == "/v1/chat/completions"][-1]["key"])


async def _key_in_use(client: AsyncUserClient, http: httpx.AsyncClient, root: str) -> str:
    """The provider key the upstream saw on a fresh call."""
    await client.ai.text("which key", model="deepseek-chat")
    return await _last_upstream_key(http, root)


async def _restore_served_key(
    admin: AsyncAdminClient, client: AsyncUserClient, http: httpx.AsyncClient, root: str
) -> None:
    """Put the session's provider key back and wait until calls use it, so the next test starts as this one did."""
    await admin.env.set("DEEPSEEK_API_KEY", SERVED_KEY)
    await eventually(lambda: _key_in_use(client, http, root), lambda key: key == SERVED_KEY)


async def test_a_rotated_provider_key_is_used_by_the_next_calls(
    served: ServedApp, admin: AsyncAdminClient, demo_upstream: str
) -> None:
    city_id, _, token = await served.new_user(credit=1_000_000)
    rotated = f"sk-rotated-{uuid.uuid4().hex}"
    root = demo_upstream.removesuffix("/v1")
    async with user(served, city_id, token) as client, httpx.AsyncClient() as http:
        try:
            await admin.env.set("DEEPSEEK_API_KEY", rotated)
            first = await eventually(lambda: _key_in_use(client, http, root), lambda key: key != SERVED_KEY)
            later = [await _key_in_use(client, http, root) for _ in range(5)]
        finally:
            await _restore_served_key(admin, client, http, root)
    assert [first, *later] == [rotated] * 6


async def _outcome(served: ServedApp, city_id: str, token: str) -> str:
    async with user(served, city_id, token) as client:
        try:
            await client.ai.text("hi", model="reverse")
        except DowncityError as error:
            return f"{error.status} {error.type}"
    return "ok"


async def test_revoking_a_user_refuses_all_their_tokens_and_no_one_elses(
    served: ServedApp, admin: AsyncAdminClient
) -> None:
    city_id, user_id, first = await served.new_user(credit=100_000)
    second = await admin.tokens.apply(city_id=city_id, user_id=user_id)
    _, _, bystander = await served.new_user(city_id=city_id, credit=100_000)
    assert await admin.tokens.revoke(user_id=user_id, city_id=city_id) == 1
    outcomes = [await _outcome(served, city_id, token) for token in (first, second.user_token, bystander)]
    assert outcomes == ["401 token_revoked", "401 token_revoked", "ok"]


async def test_a_token_revoked_by_id_is_refused(served: ServedApp, admin: AsyncAdminClient) -> None:
    city_id, user_id, _ = await served.new_user(credit=100_000)
    issued = await admin.tokens.apply(city_id=city_id, user_id=user_id)
    before = await _outcome(served, city_id, issued.user_token)
    assert await admin.tokens.revoke(token_id=issued.token_id) == 1
    assert (before, await _outcome(served, city_id, issued.user_token)) == ("ok", "401 token_revoked")


async def test_no_admin_route_answers_a_user_token_or_no_token(served: ServedApp) -> None:
    _, _, token = await served.new_user()
    spec = (await served.admin.get("/openapi.json")).json()
    admin_routes = [
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        if path not in USER_OR_PUBLIC_PATHS and not path.startswith("/v1/ai/")
        for method in operations
    ]
    async with httpx.AsyncClient(base_url=served.url) as http:
        seen = {}
        for method, path in admin_routes:
            as_user = await http.request(method, path, json={}, headers={"Authorization": f"Bearer {token}"})
            anonymous = await http.request(method, path, json={})
            seen[(method, path)] = (as_user.status_code, as_user.json()["error"]["type"], anonymous.status_code)
    assert {
        ("POST", "/v1/cities/create"),
        ("GET", "/v1/cities/list"),
        ("POST", "/v1/cities/pause"),
        ("POST", "/v1/tokens/apply"),
        ("POST", "/v1/tokens/revoke"),
        ("GET", "/v1/env/list"),
        ("POST", "/v1/env/set"),
        ("POST", "/v1/env/remove"),
        ("POST", "/v1/balance/credit"),
        ("GET", "/v1/usage/list"),
        ("GET", "/v1/usage/summary"),
        ("GET", "/v1/jobs/list"),
    } <= set(seen)
    assert set(seen.values()) == {(403, "forbidden", 401)}


async def test_usage_routes_total_a_users_calls_and_users_see_only_their_own(
    served: ServedApp, admin: AsyncAdminClient
) -> None:
    city_id, user_id, token = await served.new_user(credit=100_000, metadata={"plan": "free"})
    _, _, neighbour = await served.new_user(city_id=city_id, credit=100_000)
    async with user(served, city_id, token) as client:
        for prompt in ("one", "two"):
            await client.ai.text(prompt, model="deepseek-flat")
        assert await status_of(client.ai.text("premium", model="deepseek-vl")) == 402
        mine = await client.usage()
    async with user(served, city_id, neighbour) as client:
        theirs = await client.usage()
    summary = await admin.usage.summary(group_by="model", user_id=user_id, since="1h")
    listed = await admin.usage.list(user_id=user_id, status="refused")
    assert [(r.key, r.requests, r.errors, r.charge_microcredits) for r in summary] == [
        ("deepseek-flat", 2, 0, 1_000),
        ("deepseek-vl", 1, 1, 0),
    ]
    assert [(r.model_id, r.status, r.http_status, r.error_type) for r in listed] == [
        ("deepseek-vl", "refused", 402, "upgrade_required")
    ]
    assert [(r.model_id, r.status) for r in mine] == [
        ("deepseek-vl", "refused"),
        ("deepseek-flat", "ok"),
        ("deepseek-flat", "ok"),
    ]
    assert theirs == []


def _ray_logs_dir() -> Path:
    import ray

    node = ray._private.worker.global_worker.node
    assert node is not None, "this process is not connected to the session's Ray cluster"
    return Path(node.get_logs_dir_path())


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def _error_bodies(served: ServedApp, client: AsyncUserClient, secret: str) -> list[str]:
    """Provoke upstream and admin errors while `secret` is the live provider key; return every body."""
    bodies = []
    for marker in ("[[fail:500]]", "[[malformed]]", "[[fail:401]]"):
        bodies.append(await _failure_text(client.ai.text(f"fail {marker}", model="deepseek-chat")))
    for body in (
        {"key": "not a key name", "value": secret},
        {"key": "DEEPSEEK_API_KEY", "value": secret * 2000},
        {"key": "DEEPSEEK_API_KEY", "value": 12345, "extra": secret},
    ):
        bodies.append((await served.admin.post("/v1/env/set", json=body)).text)
    bodies.append((await served.admin.get("/v1/env/list")).text)
    return bodies


async def _failure_text(call: Awaitable[object]) -> str:
    try:
        await call
    except DowncityError as error:
        return f"{error.status} {error.type} {error.message} {error.field}"
    raise AssertionError("the call was expected to fail")


async def test_no_response_log_line_or_stored_row_contains_a_provider_key(
    served: ServedApp, admin: AsyncAdminClient, demo_upstream: str
) -> None:
    secret = f"sk-leakcheck-{uuid.uuid4().hex}"
    city_id, _, token = await served.new_user(credit=1_000_000)
    root = demo_upstream.removesuffix("/v1")
    async with user(served, city_id, token) as client, httpx.AsyncClient() as http:
        try:
            entry = await admin.env.set("DEEPSEEK_API_KEY", secret)
            await eventually(lambda: _key_in_use(client, http, root), lambda key: key == secret)
            bodies = await _error_bodies(served, client, secret)
        finally:
            await _restore_served_key(admin, client, http, root)
    logs = _ray_logs_dir()
    # The replica's line for the 401 above reaches the log files once Ray's log monitor flushes them.
    logged_401 = await eventually(
        lambda: asyncio.to_thread(_files_containing, logs / "serve", b"upstream returned HTTP 401"), bool
    )
    db = Database(served.database_url)
    try:
        async with db.connect() as conn:
            stored = b"".join((await conn.execute(select(env_table.c.value_enc))).scalars())
    finally:
        await db.dispose()
    middle = secret[4:-2]
    assert entry.preview == f"{secret[:4]}…{secret[-2:]}"
    assert [body for body in bodies if middle in body] == []
    assert middle.encode() not in stored
    # The scan covers what the provider replica logged while the secret was live: the 401 above is only ours.
    assert logged_401 != []
    assert _files_containing(logs, middle.encode()) == []
