"""A federation file served in-process against the demo upstream: its prices, fallback and Python hooks run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from downcity.ai.federation_file import load_federation_file
from downcity.client import AsyncAdminClient
from downcity.demo.images import IMAGE_DATA_URL
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.settings import Settings

ADMIN_KEY = "test-admin"
BASE_URL = "http://downcity.test"
FILE = """\
name: served-yaml
hooks:
  before: [tests.unit.ai.yaml_hooks:deny_banned]
providers:
  - {{id: up, base_url: "{upstream}", env_key: UP_API_KEY}}
models:
  - id: chat
    provider: up
    default: [text, stream, openai]
    fallback: [{{media: image/*, model: eyes}}]
    price: {{per_call: 700}}
    hold_microcredits: 700
  - id: eyes
    provider: up
    media: [image/*]
    bill: tests.unit.ai.yaml_hooks:half_price
    hold_microcredits: 1000
"""


@pytest.fixture
async def app(database_url: str, tmp_path: Path, demo_upstream: str) -> AsyncIterator[httpx.AsyncClient]:
    file = tmp_path / "federation.yaml"
    file.write_text(FILE.format(upstream=demo_upstream))
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    runtime = await open_local_runtime(load_federation_file(file), settings)
    await runtime.env_store.set("UP_API_KEY", "k")
    await runtime.env.refresh()
    transport = httpx.ASGITransport(app=create_app(runtime, manage_runtime=False))
    async with AsyncAdminClient(BASE_URL, admin_key=ADMIN_KEY, transport=transport) as admin:
        await admin.cities.create("YAML app", city_id="yaml")
        await runtime.refresh()
        for user in ("u1", "banned"):
            await admin.balance.credit("yaml", user, 100_000, f"seed-{user}")
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield client
    await runtime.stop()


async def token(app: httpx.AsyncClient, user_id: str, metadata: dict[str, object]) -> dict[str, str]:
    issued = await app.post("/v1/tokens/apply", json={"city_id": "yaml", "user_id": user_id, "metadata": metadata})
    return {"Authorization": f"Bearer {issued.json()['user_token']}"}


async def test_the_default_model_charges_its_flat_price(app: httpx.AsyncClient) -> None:
    reply = await app.post("/v1/ai/text", json={"prompt": "hi there"}, headers=await token(app, "u1", {}))
    body = reply.json()
    assert (reply.status_code, body["metadata"]["model"], body["metadata"]["charge"]["amount_microcredits"]) == (
        200,
        "chat",
        700,
    )


async def test_an_image_falls_back_to_the_model_billed_by_the_named_function(app: httpx.AsyncClient) -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "file", "mediaType": "image/png", "url": IMAGE_DATA_URL},
    ]
    body = {"messages": [{"role": "user", "parts": parts}]}
    reply = (await app.post("/v1/ai/text", json=body, headers=await token(app, "u1", {}))).json()
    usage = reply["metadata"]["usage"]
    assert reply["metadata"]["model"] == "eyes"
    total = usage["input_tokens"] + usage["output_tokens"]
    assert reply["metadata"]["charge"]["amount_microcredits"] == (total + 1) // 2


async def test_the_named_federation_hook_refuses_a_banned_user(app: httpx.AsyncClient) -> None:
    reply = await app.post("/v1/ai/text", json={"prompt": "hi"}, headers=await token(app, "banned", {"banned": True}))
    assert (reply.status_code, reply.json()["error"]["type"]) == (403, "banned")
