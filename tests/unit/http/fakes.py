"""An in-process app over a faked upstream: an httpx MockTransport that speaks OpenAI chat/completions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from downcity.ai.context import Context
from downcity.ai.federation import Federation
from downcity.ai.openai_client import OpenAICompatibleClient
from downcity.ai.provider import Provider
from downcity.ai.service import AIService
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.runtime import Runtime
from downcity.settings import MAX_AMOUNT_MICROCREDITS, Settings
from downcity.store.schema import metadata
from downcity.types import ChargeDraft, ImageJobResult
from tests.conftest import TEST_ADMIN_KEY, TEST_MASTER_KEY

FAKE_KEY_ENV = "FAKE_API_KEY"
CANARY_KEY = "sk-canary-7c1e0f9a2b4d4e8f9a0b1c2d3e4f5a6b"
UPSTREAM_URL = "http://upstream.test/v1"
CITY_ID = "acme"
USER_ID = "alice"
ACCOUNT = f"{CITY_ID}/{USER_ID}"


@dataclass
class FakeUpstream:
    """Answers chat/completions like OpenAI; `error_code` makes it fail with that code. Counts every call."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    image_calls: int = 0
    error_code: str | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append(body)
        if self.error_code is not None:
            error = {"error": {"message": f"bad key {CANARY_KEY}", "code": self.error_code}}
            return httpx.Response(401, json=error)
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if body.get("stream"):
            chunks = [
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}}]},
                {"choices": [], "usage": usage},
            ]
            sse = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
        message = {"role": "assistant", "content": "ok"}
        return httpx.Response(200, json={"id": "c1", "choices": [{"index": 0, "message": message}], "usage": usage})


class FakeProvider(Provider):
    """An OpenAI-compatible provider whose HTTP goes to a `FakeUpstream`, plus in-memory image jobs."""

    def __init__(self, upstream: FakeUpstream) -> None:
        super().__init__("fake", env=[FAKE_KEY_ENV], env_key=FAKE_KEY_ENV, base_url=UPSTREAM_URL)
        self.upstream = upstream
        self._http = httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle))

    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        """A client whose requests reach the fake upstream."""
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url, http=self._http)

    async def image_create(self, ctx: Context) -> ImageJobResult:
        """Start a fake image job."""
        self.upstream.image_calls += 1
        return ImageJobResult(job_id=f"up-{self.upstream.image_calls}", status="queued", poll_after_ms=60_000)

    async def image_fetch(self, ctx: Context) -> ImageJobResult:
        """The fake job never finishes."""
        return ImageJobResult(job_id="up", status="running", poll_after_ms=60_000)


def _price(ctx: Context, output: Any) -> ChargeDraft:
    usage = ctx.metering.usage
    return ChargeDraft(amount_microcredits=usage.input_tokens + usage.output_tokens, ref=ctx.request_id)


def fake_federation(upstream: FakeUpstream) -> Federation:
    """One billable chat model (text, stream, openai) and one image model over the fake upstream."""
    provider = FakeProvider(upstream)
    chat = provider.model("fake-chat", default=("text", "stream", "openai"), bill=_price, hold_microcredits=100)
    image = provider.model("fake-image", default=("image",))
    return Federation(name="fake").use(AIService().use(chat).use(image))


@dataclass
class App:
    """The in-process app, its runtime, the fake upstream and credentials for both kinds of caller."""

    app: FastAPI
    runtime: Runtime
    upstream: FakeUpstream
    user_token: str

    def client(self, token: str) -> httpx.AsyncClient:
        """An HTTP client for the app, authenticated with `token`."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://downcity.test",
            headers={"Authorization": f"Bearer {token}"},
        )

    def admin(self) -> httpx.AsyncClient:
        """A client with the admin key."""
        return self.client(TEST_ADMIN_KEY)

    def user(self) -> httpx.AsyncClient:
        """A client with the user token of `alice` in `acme`."""
        return self.client(self.user_token)


@asynccontextmanager
async def running_app(database_url: str, data_dir: Path, *, balance: int = 10**12) -> AsyncIterator[App]:
    """An app with city `acme`, user `alice` holding `balance` microcredits, and the canary provider key stored."""
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        master_key=TEST_MASTER_KEY,
        admin_key=TEST_ADMIN_KEY,
    )
    upstream = FakeUpstream()
    runtime = await open_local_runtime(fake_federation(upstream), settings)
    try:
        await runtime.env_store.set(FAKE_KEY_ENV, CANARY_KEY)
        await runtime.cities.create("Acme", CITY_ID)
        await runtime.refresh()
        # The ledger takes at most MAX_AMOUNT_MICROCREDITS per credit, so a large balance arrives in parts.
        parts = [MAX_AMOUNT_MICROCREDITS] * (balance // MAX_AMOUNT_MICROCREDITS) + [balance % MAX_AMOUNT_MICROCREDITS]
        await asyncio.gather(
            *(runtime.ledger.credit(f"seed-{i}", ACCOUNT, part) for i, part in enumerate(parts) if part)
        )
        issued = await runtime.security.issuer.apply(CITY_ID, USER_ID)
        yield App(create_app(runtime, manage_runtime=False), runtime, upstream, issued.user_token)
    finally:
        await runtime.stop()


async def row_counts(runtime: Runtime) -> dict[str, int]:
    """How many rows every table holds, to show a refused request wrote nothing."""
    async with runtime.db.connect() as conn:
        return {
            table.name: (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            for table in metadata.sorted_tables
        }
