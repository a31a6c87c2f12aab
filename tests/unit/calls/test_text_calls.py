"""Text calls over HTTP: the message the caller gets (its id, its parts as JSON), what a replay returns, what the
usage row and the `after` hooks see. In-process app over ASGI with an in-process provider, on both databases."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from downcity.ai import AIService, Context, Federation, Provider
from downcity.calls.replays import key_hash
from downcity.gateway.actions import ActionRequest, TextOutcome
from downcity.gateway.ports import LocalGateway
from downcity.gateway.runner import ProviderRunner
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.store.schema import usage_records
from downcity.types import ChargeDraft, FilePart, TextPart, UIMessage

CITY = "shop"
CREDIT = 100_000
FLAT = 500
FIRST_BYTE_MS = 42
DRAWN_AT = datetime.datetime(2024, 1, 2, 3, 4, 5)
IMAGE_URL = "data:image/png;base64,AA"


class Writer(Provider):
    """Answers the prompt as text plus a picture whose part carries an extra `drawnAt` datetime. Counts its calls."""

    calls: int = 0

    async def text(self, ctx: Context) -> UIMessage:
        self.calls += 1
        picture = FilePart(media_type="image/png", url=IMAGE_URL, drawnAt=DRAWN_AT)
        return UIMessage(id="msg-own", role="assistant", parts=[TextPart(text=self.extract_prompt(ctx.input)), picture])


class Reshaping(LocalGateway):
    """The local gateway, changing each text outcome by `update` (a message without an id, a first-byte time)."""

    def __init__(self, runners: dict[str, ProviderRunner], update: dict[str, Any]) -> None:
        super().__init__(runners)
        self.update = update

    async def text(self, provider_id: str, req: ActionRequest) -> TextOutcome:
        outcome = await super().text(provider_id, req)
        return outcome.model_copy(update=self.update)


def _flat(ctx: Context, output: Any) -> ChargeDraft:
    return ChargeDraft(amount_microcredits=FLAT)


@dataclass
class App:
    runtime: Runtime
    http: httpx.AsyncClient
    token: str
    writer: Writer
    outputs: list[Any]

    async def text(self, prompt: str, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} | ({"Idempotency-Key": key} if key else {})
        return await self.http.post("/v1/ai/text", json={"model": "writer", "prompt": prompt}, headers=headers)

    def reshape(self, **update: Any) -> None:
        assert isinstance(self.runtime.gateway, LocalGateway)
        self.runtime.gateway = Reshaping(self.runtime.gateway.runners, update)

    async def balance(self) -> tuple[int, int]:
        value = await self.runtime.ledger.balance(f"{CITY}/u1")
        return value.balance, value.held

    async def usage(self) -> list[Any]:
        async with self.runtime.db.connect() as conn:
            return list(await conn.execute(select(usage_records).order_by(usage_records.c.created_at_ms)))


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    writer = Writer("writer")
    federation = Federation(name="texts").use(
        AIService().use(writer.model("writer", default="text", bill=_flat, hold_microcredits=FLAT))
    )
    outputs: list[Any] = []
    federation.after(lambda ctx: outputs.append(ctx.output))
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key="test-admin")
    runtime = await open_local_runtime(federation, settings)
    await runtime.cities.create("Shop", city_id=CITY)
    await runtime.refresh()
    await runtime.ledger.credit(f"seed-{uuid.uuid4().hex}", f"{CITY}/u1", CREDIT)
    issued = await runtime.security.issuer.apply(CITY, "u1")
    transport = httpx.ASGITransport(app=create_app(runtime, manage_runtime=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://downcity.test", timeout=30) as http:
        yield App(runtime, http, issued.user_token, writer, outputs)
    await runtime.stop()


def _answer(message_id: str) -> dict[str, Any]:
    """The answer to the prompt "hello", as JSON."""
    return {
        "id": message_id,
        "role": "assistant",
        "parts": [
            {"type": "text", "text": "hello"},
            {
                "type": "file",
                "mediaType": "image/png",
                "url": IMAGE_URL,
                "filename": None,
                "drawnAt": "2024-01-02T03:04:05",
            },
        ],
        "metadata": {
            "model": "writer",
            "usage": {
                "input_tokens": 0,
                "output_tokens": 0,
                "cached_tokens": 0,
                "reasoning_tokens": 0,
                "cache_write_tokens": 0,
                "images": 0,
                "seconds": 0,
            },
            "charge": {"amount_microcredits": FLAT, "user_id": None, "ref": None, "note": None, "metadata": {}},
        },
    }


async def test_a_text_answer_keeps_the_providers_message_id_and_sends_its_parts_as_json(app: App) -> None:
    response = await app.text("hello")

    assert (response.status_code, response.json()) == (200, _answer("msg-own"))


async def test_a_text_message_without_an_id_is_answered_under_the_call_id(app: App) -> None:
    app.reshape(output=UIMessage(role="assistant", parts=[TextPart(text="no id")]))

    response = await app.text("hello")

    [row] = await app.usage()
    assert (response.status_code, response.json()["id"]) == (200, row.request_id)


async def test_a_texts_usage_row_records_its_time_to_first_byte(app: App) -> None:
    app.reshape(ttfb_ms=FIRST_BYTE_MS)

    response = await app.text("hello")

    [row] = await app.usage()
    assert (response.status_code, row.ttfb_ms) == (200, FIRST_BYTE_MS)


async def test_a_replayed_text_returns_the_stored_message_marked_replayed_and_costs_nothing_more(app: App) -> None:
    first = await app.text("hello", key="t-1")

    replay = await app.text("hello", key="t-1")

    assert (first.status_code, first.json()) == (200, _answer("msg-own"))
    assert (replay.status_code, replay.json(), replay.headers.get("idempotent-replayed")) == (
        200,
        _answer("msg-own"),
        "true",
    )
    assert (app.writer.calls, await app.balance()) == (1, (CREDIT - FLAT, 0))


async def test_a_texts_after_hooks_see_the_providers_message(app: App) -> None:
    await app.text("hello")

    assert [output.model_dump(mode="json") for output in app.outputs] == [
        {key: value for key, value in _answer("msg-own").items() if key != "metadata"} | {"metadata": {}}
    ]


async def test_a_texts_usage_row_carries_its_idempotency_key_scoped_to_the_text_pathway(app: App) -> None:
    response = await app.text("hello", key="t-scope")

    [row] = await app.usage()
    assert (response.status_code, row.idempotency_key) == (200, key_hash(CITY, "u1", "text", "t-scope"))
