"""The demo Federation in-process against the demo upstream: its catalog, and image jobs billed per image."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from downcity.client import AsyncAdminClient, AsyncUserClient, Balance
from downcity.demo.federation import DEMO_KEY_ENV, DEMO_UPSTREAM_ENV, IMAGE_PRICE, build_demo_federation
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.settings import Settings
from downcity.types import FilePart

ADMIN_KEY = "test-admin"
BASE_URL = "http://downcity.test"
CREDIT = 1_000_000
SETTLE_DEADLINE_S = 10


@pytest.fixture
async def user(
    database_url: str, tmp_path: Path, demo_upstream: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AsyncUserClient]:
    monkeypatch.setenv(DEMO_UPSTREAM_ENV, demo_upstream)
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    runtime = await open_local_runtime(build_demo_federation(), settings)
    await runtime.env_store.set(DEMO_KEY_ENV, "demo-key")
    await runtime.env.refresh()
    transport = httpx.ASGITransport(app=create_app(runtime, manage_runtime=False))
    admin = AsyncAdminClient(BASE_URL, admin_key=ADMIN_KEY, transport=transport)
    await admin.cities.create("Demo city", city_id="demo")
    await runtime.refresh()
    await admin.balance.credit("demo", "demo-user", CREDIT, "seed")
    issued = await admin.tokens.apply(city_id="demo", user_id="demo-user")
    client = AsyncUserClient(BASE_URL, city_id="demo", user_token=issued.user_token, transport=transport)
    async with admin, client:
        yield client
    await runtime.stop()


async def settled_balance(user: AsyncUserClient) -> Balance:
    """The balance once the job's charge has landed: the JobManager stores the outcome, then bills it."""
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    balance = await user.balance()
    while balance.balance == CREDIT and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        balance = await user.balance()
    return balance


def test_the_demo_serves_text_vision_and_image_models_with_bounded_holds() -> None:
    models = build_demo_federation().models
    holds = {m.id: (m.hold_for({}), m.hold_for({"count": 3}), m.hold_for({"count": 99})) for m in models.values()}
    assert {m.id: (m.pathways, m.default) for m in models.values()} == {
        "demo-chat": (("text", "stream", "openai"), ("text", "stream", "openai")),
        "demo-vision": (("text", "stream", "openai"), ()),
        "demo-image": (("image",), ("image",)),
    }
    assert holds == {
        "demo-chat": (5_000, 5_000, 5_000),
        "demo-vision": (5_000, 5_000, 5_000),
        "demo-image": (IMAGE_PRICE, 3 * IMAGE_PRICE, 8 * IMAGE_PRICE),
    }


async def test_an_image_job_without_a_model_uses_demo_image_and_bills_per_image(user: AsyncUserClient) -> None:
    created = await user.ai.image_create("two lighthouses", count=2)

    job = await user.ai.wait_image(created.job_id, timeout=20)
    balance = await settled_balance(user)

    assert (created.status, job.status) == ("queued", "succeeded")
    assert job.result is not None
    assert [p.media_type for p in job.result.parts if isinstance(p, FilePart)] == ["image/png", "image/png"]
    assert (balance.balance, balance.held) == (CREDIT - 2 * IMAGE_PRICE, 0)
