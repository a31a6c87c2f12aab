"""The async clients against the real HTTP app (in-process runtime, demo upstream) over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from downcity.client import (
    AsyncAdminClient,
    AsyncUserClient,
    Balance,
    City,
    DowncityError,
    EnvEntry,
    LedgerEntry,
)
from downcity.demo.federation import build_demo_federation
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.types import TextPart

ADMIN_KEY = "test-admin"
BASE_URL = "http://downcity.test"
CITY = "web"
USER = "u1"
CREDIT = 1_000_000


@dataclass
class Served:
    """The runtime behind the app and a transport into it."""

    runtime: Runtime
    transport: httpx.ASGITransport

    def user(self, token: str, city_id: str = CITY) -> AsyncUserClient:
        return AsyncUserClient(BASE_URL, city_id=city_id, user_token=token, transport=self.transport)


@pytest.fixture
async def served(
    database_url: str, tmp_path: Path, demo_upstream: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Served]:
    monkeypatch.setenv("DOWNCITY_DEMO_UPSTREAM_URL", demo_upstream)
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    runtime = await open_local_runtime(build_demo_federation(), settings)
    await runtime.env_store.set("DEMO_API_KEY", "k")
    await runtime.env.refresh()
    yield Served(runtime, httpx.ASGITransport(app=create_app(runtime, manage_runtime=False)))
    await runtime.stop()


@pytest.fixture
async def admin(served: Served) -> AsyncIterator[AsyncAdminClient]:
    async with AsyncAdminClient(BASE_URL, admin_key=ADMIN_KEY, transport=served.transport) as client:
        yield client


async def _new_token(served: Served, admin: AsyncAdminClient, *, credit: int = CREDIT) -> str:
    """A token for USER in CITY (created on first use), after crediting USER with `credit`."""
    if all(city.city_id != CITY for city in await admin.cities.list()):
        await admin.cities.create("Web app", city_id=CITY)
        # The app's refreshers are not running under ASGITransport; load the new city directly.
        await served.runtime.refresh()
    if credit:
        await admin.balance.credit(CITY, USER, credit, f"seed-{USER}")
    issued = await admin.tokens.apply(city_id=CITY, user_id=USER, metadata={"plan": "pro"})
    return issued.user_token


@pytest.fixture
async def user(served: Served, admin: AsyncAdminClient) -> AsyncIterator[AsyncUserClient]:
    async with served.user(await _new_token(served, admin)) as client:
        yield client


async def test_admin_creates_an_active_city(admin: AsyncAdminClient) -> None:
    city = await admin.cities.create("Web app", city_id="web")

    assert isinstance(city, City)
    assert (city.city_id, city.name, city.status) == ("web", "Web app", "active")


async def test_admin_lists_cities(admin: AsyncAdminClient) -> None:
    await admin.cities.create("One", city_id="one")
    await admin.cities.create("Two", city_id="two")

    assert [city.city_id for city in await admin.cities.list()] == ["one", "two"]


async def test_admin_pauses_and_activates_a_city(admin: AsyncAdminClient) -> None:
    await admin.cities.create("Web app", city_id="web")

    assert (await admin.cities.pause("web")).status == "paused"
    assert (await admin.cities.activate("web")).status == "active"


async def test_admin_credit_returns_the_ledger_entry(admin: AsyncAdminClient) -> None:
    entry = await admin.balance.credit("web", "u1", 2_500, "top-1", note="welcome")

    assert isinstance(entry, LedgerEntry)
    assert (entry.city_id, entry.user_id, entry.account_id) == ("web", "u1", "web/u1")
    assert (entry.kind, entry.amount_microcredits) == ("credit", 2_500)
    assert (entry.balance_after_microcredits, entry.note) == (2_500, "welcome")


async def test_admin_debit_get_and_history(admin: AsyncAdminClient) -> None:
    await admin.balance.credit("web", "u1", 2_500, "top-1")
    await admin.balance.debit("web", "u1", 500, "take-1")

    assert await admin.balance.get("web", "u1") == Balance(
        city_id="web", user_id="u1", account_id="web/u1", balance=2_000, held=0, available=2_000
    )
    history = await admin.balance.history("web", "u1", limit=10)
    assert [(e.kind, e.amount_microcredits) for e in history] == [("debit", 500), ("credit", 2_500)]


async def test_admin_issues_a_token_for_the_city(admin: AsyncAdminClient) -> None:
    await admin.cities.create("Web app", city_id="web")

    issued = await admin.tokens.apply(city_id="web", user_id="u1", metadata={"plan": "pro"}, ttl=3600)

    claims = jwt.decode(issued.user_token, options={"verify_signature": False})
    assert (issued.city_id, issued.user_id) == ("web", "u1")
    assert (claims["city_id"], claims["user_id"], claims["metadata"], claims["jti"]) == (
        "web",
        "u1",
        {"plan": "pro"},
        issued.token_id,
    )
    assert claims["exp"] == int(claims["iat"]) + 3600


async def test_admin_revokes_every_token_of_a_user(admin: AsyncAdminClient) -> None:
    await admin.cities.create("Web app", city_id="web")
    await admin.tokens.apply(city_id="web", user_id="u1")

    assert await admin.tokens.revoke(user_id="u1", city_id="web") == 1


async def test_revoked_token_is_refused(served: Served, admin: AsyncAdminClient) -> None:
    token = await _new_token(served, admin)
    await admin.tokens.revoke(user_id=USER)

    async with served.user(token) as client:
        with pytest.raises(DowncityError) as caught:
            await client.balance()

    assert (caught.value.status, caught.value.type) == (401, "token_revoked")


async def test_admin_sets_lists_and_removes_env_keys(admin: AsyncAdminClient) -> None:
    entry = await admin.env.set("OPENAI_API_KEY", "sk-abcdefghijklmnop-9f")

    assert isinstance(entry, EnvEntry)
    assert (entry.key, entry.preview) == ("OPENAI_API_KEY", "sk-a…9f")
    assert [e.key for e in await admin.env.list()] == ["DEMO_API_KEY", "OPENAI_API_KEY"]
    assert await admin.env.remove("OPENAI_API_KEY") is True
    assert await admin.env.remove("OPENAI_API_KEY") is False


async def test_user_text_returns_the_assistant_message(user: AsyncUserClient) -> None:
    message = await user.ai.text("hello there")

    assert message.role == "assistant"
    assert message.parts == [TextPart(text="Echo: hello there")]
    assert message.metadata["model"] == "demo-chat"
    assert message.metadata["charge"]["amount_microcredits"] == 8


async def test_user_text_accepts_messages(user: AsyncUserClient) -> None:
    messages = [{"role": "user", "parts": [{"type": "text", "text": "from messages"}]}]

    message = await user.ai.text(messages=messages, model="demo-chat")

    assert message.parts == [TextPart(text="Echo: from messages")]


async def test_text_with_an_idempotency_key_is_replayed(user: AsyncUserClient) -> None:
    first = await user.ai.text("once", idempotency_key="req-1")
    second = await user.ai.text("once", idempotency_key="req-1")

    assert second.id == first.id
    assert first.metadata["charge"]["amount_microcredits"] == 5
    assert (await user.balance()).balance == CREDIT - 5


async def test_user_stream_yields_ui_message_chunks(user: AsyncUserClient) -> None:
    chunks = [chunk async for chunk in user.ai.stream("hello world")]

    assert [c["type"] for c in chunks] == [
        "start",
        "text-start",
        "text-delta",
        "text-delta",
        "text-delta",
        "text-end",
        "finish",
    ]
    assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == "Echo: hello world"
    assert chunks[-1]["messageMetadata"]["model"] == "demo-chat"


async def test_stream_error_chunk_raises(user: AsyncUserClient) -> None:
    with pytest.raises(DowncityError) as caught:
        async for _ in user.ai.stream("boom [[fail:500]]"):
            pass

    error = caught.value
    assert (error.status, error.type) == (200, "upstream_error")
    assert error.message == "upstream returned HTTP 500 (demo_fault)"


async def test_user_lists_models(user: AsyncUserClient) -> None:
    models = await user.ai.models()

    assert [(m.id, m.default_for) for m in models] == [
        ("demo-chat", ["text", "stream", "openai"]),
        ("demo-vision", []),
        ("demo-image", ["image"]),
    ]
    assert models[0].model_extra == {"provider": "demo", "media": []}


async def test_user_reads_own_balance(user: AsyncUserClient) -> None:
    assert await user.balance() == Balance(
        city_id=CITY, user_id=USER, account_id=f"{CITY}/{USER}", balance=CREDIT, held=0, available=CREDIT
    )


async def test_bad_token_raises_401(served: Served) -> None:
    async with served.user("not-a-token") as client:
        with pytest.raises(DowncityError) as caught:
            await client.ai.models()

    assert (caught.value.status, caught.value.type, caught.value.field) == (401, "token_invalid", None)


async def test_city_header_must_match_the_token(served: Served, admin: AsyncAdminClient) -> None:
    async with served.user(await _new_token(served, admin), city_id="other") as client:
        with pytest.raises(DowncityError) as caught:
            await client.balance()

    assert (caught.value.status, caught.value.type) == (403, "city_mismatch")


async def test_empty_balance_raises_402(served: Served, admin: AsyncAdminClient) -> None:
    async with served.user(await _new_token(served, admin, credit=0)) as client:
        with pytest.raises(DowncityError) as caught:
            await client.ai.text("hi")

    assert (caught.value.status, caught.value.type, caught.value.field) == (402, "insufficient_balance", None)


async def test_empty_balance_stream_raises_402_before_any_chunk(served: Served, admin: AsyncAdminClient) -> None:
    received: list[dict[str, object]] = []
    async with served.user(await _new_token(served, admin, credit=0)) as client:
        with pytest.raises(DowncityError) as caught:
            async for chunk in client.ai.stream("hi"):
                received.append(chunk)

    assert (caught.value.status, caught.value.type, received) == (402, "insufficient_balance", [])


async def test_unknown_city_raises_404_naming_the_field(admin: AsyncAdminClient) -> None:
    with pytest.raises(DowncityError) as caught:
        await admin.cities.pause("nowhere")

    error = caught.value
    assert (error.status, error.type, error.field) == (404, "city_not_found", "city_id")
    assert error.message == "city 'nowhere' does not exist"


async def test_invalid_amount_raises_422_naming_the_field(admin: AsyncAdminClient) -> None:
    with pytest.raises(DowncityError) as caught:
        await admin.balance.credit("web", "u1", 0, "zero")

    error = caught.value
    assert (error.status, error.type, error.field) == (422, "invalid_request", "amount_microcredits")


async def test_missing_prompt_raises_422(user: AsyncUserClient) -> None:
    with pytest.raises(DowncityError) as caught:
        await user.ai.text()

    assert (caught.value.status, caught.value.type, caught.value.field) == (422, "invalid_request", "prompt")


async def test_wrong_admin_key_raises_401(served: Served) -> None:
    async with AsyncAdminClient(BASE_URL, admin_key="wrong", transport=served.transport) as client:
        with pytest.raises(DowncityError) as caught:
            await client.cities.list()

    assert (caught.value.status, caught.value.type) == (401, "unauthorized")
