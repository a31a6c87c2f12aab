"""Retries and error fallback in process (`downcity.local`), over HTTP against the demo upstream."""

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

from downcity import AIService, Context, Federation, ImageJobResult, OpenAICompatibleProvider, Provider, Retry
from downcity.errors import upstream_error
from downcity.http.app import create_app
from downcity.jobs.store import JobStore
from downcity.local import open_local_runtime
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.store.schema import usage_records
from examples.federation import DeepSeekImages, per_image

ADMIN_KEY = "test-admin"
CITY = "shop"
HOLD = 20_000


class BrokenImages(Provider):
    """An image upstream whose create always answers 503."""

    async def image_create(self, ctx: Context) -> ImageJobResult:
        error = upstream_error("upstream returned HTTP 503")
        error.detail = {"upstream_status": 503}
        raise error

    async def image_fetch(self, ctx: Context) -> ImageJobResult:
        raise AssertionError("no job was created")


def _federation(upstream_url: str) -> Federation:
    chat = OpenAICompatibleProvider(
        "up", env_key="UP_KEY", base_url=upstream_url, retry=Retry(attempts=2, backoff_s=0.01)
    )
    backup_chat = OpenAICompatibleProvider("backup", env_key="UP_KEY", base_url=upstream_url)
    images = DeepSeekImages("img", env_key="UP_KEY", base_url=upstream_url)
    backup = backup_chat.model("backup-chat")
    working = images.model("working-image", bill=per_image, hold_microcredits=HOLD)
    broken = BrokenImages("broken").model(
        "broken-image",
        default="image",
        bill=per_image,
        hold_microcredits=HOLD,
        fallback=[{"on": "error", "model": working}],
    )
    primary = chat.model("primary", default=("text", "stream", "openai"), fallback=[{"on": "error", "model": backup}])
    return Federation(name="fallbacks").use(AIService().use(primary).use(backup).use(working).use(broken))


@dataclass
class App:
    runtime: Runtime
    http: httpx.AsyncClient

    async def rows(self) -> list[dict[str, Any]]:
        async with self.runtime.db.connect() as conn:
            found = await conn.execute(select(usage_records).order_by(usage_records.c.created_at_ms))
            return [dict(row._mapping) for row in found]


@pytest.fixture
async def app(database_url: str, tmp_path: Path, demo_upstream: str) -> AsyncIterator[App]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    runtime = await open_local_runtime(_federation(demo_upstream), settings)
    await runtime.env_store.set("UP_KEY", f"k-{uuid.uuid4().hex}")
    await runtime.cities.create("Shop", city_id=CITY)
    await runtime.refresh()
    issued = await runtime.security.issuer.apply(CITY, "u1")
    transport = httpx.ASGITransport(app=create_app(runtime, manage_runtime=False))
    headers = {"Authorization": f"Bearer {issued.user_token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://local", headers=headers, timeout=30) as http:
        credit = {"city_id": CITY, "user_id": "u1", "amount_microcredits": 1_000_000, "idempotency_key": "seed"}
        credited = await http.post("/v1/balance/credit", json=credit, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert credited.status_code == 200, credited.text
        yield App(runtime, http)
    await runtime.stop()


def prompt(*markers: str) -> str:
    return " ".join([f"hi {uuid.uuid4().hex[:8]}", *markers])


async def test_a_retried_500_is_one_ok_row_listing_both_attempts(app: App) -> None:
    reply = await app.http.post("/v1/ai/text", json={"prompt": prompt("[[fail:500]]", "[[fail-times:1]]")})
    assert (reply.status_code, reply.json()["metadata"]["model"]) == (200, "primary")
    [row] = await app.rows()
    assert [(a["model"], a["status"]) for a in row["attempts"]] == [("primary", 500), ("primary", 200)]
    assert (row["fallback_from"], row["key_name"]) == (None, "UP_KEY")


async def test_exhausted_retries_fall_back_and_the_row_names_both_models(app: App) -> None:
    reply = await app.http.post("/v1/ai/text", json={"prompt": prompt("[[fail:502]]", "[[fail-times:2]]")})
    assert (reply.status_code, reply.json()["metadata"]["model"]) == (200, "backup-chat")
    [row] = await app.rows()
    assert (row["model_id"], row["fallback_from"]) == ("backup-chat", "primary")
    assert [(a["model"], a["status"]) for a in row["attempts"]] == [
        ("primary", 502),
        ("primary", 502),
        ("backup-chat", 200),
    ]


async def test_a_chat_stream_cut_after_its_first_byte_ends_with_an_error_chunk_and_no_done(app: App) -> None:
    body = {"stream": True, "messages": [{"role": "user", "content": prompt("[[slow-stream:20]]", "[[drop:3]]")}]}
    reply = await app.http.post("/v1/ai/chat/completions", json=body)
    events = [e.removeprefix("data: ") for e in reply.text.split("\n\n") if e.startswith("data: ")]
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["type"] == "upstream_unavailable"
    [row] = await app.rows()
    assert (row["model_id"], row["fallback_from"], row["status"]) == ("primary", None, "cancelled")


async def test_an_image_create_that_fails_falls_back_to_the_next_image_model(app: App) -> None:
    created = await app.http.post("/v1/ai/image/create", json={"prompt": "a cat"})
    assert created.status_code == 200, created.text
    job = await JobStore(app.runtime.db).get(created.json()["job_id"])
    assert job is not None
    assert (job.model_id, job.provider_id, job.state["fallback_from"]) == ("working-image", "img", "broken-image")
