"""Video calls over HTTP: what the answer says, what the bill sees, how a failure is unwound, what the usage row
records and which headers go back. In-process app over ASGI with an in-process provider, on both databases."""

from __future__ import annotations

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
from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import ActionRequest, VideoOutcome
from downcity.gateway.ports import LocalGateway
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.quotas import Quota
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.store.schema import usage_records
from downcity.types import ChargeDraft

CITY = "shop"
CREDIT = 100_000
FRAME_PRICE = 100
HOLD = 5_000
FIRST_BYTE_MS = 42


class Reel(Provider):
    """A storyboard: one frame per word of the prompt; `failure`, when set, is raised instead. Counts its calls."""

    failure: DowncityHTTPError | None = None
    calls: int = 0

    async def video(self, ctx: Context) -> dict[str, Any]:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return {"frames": self.extract_prompt(ctx.input).split()}


class FirstByteTimed(LocalGateway):
    """The local gateway, reporting that every video's first byte came after `FIRST_BYTE_MS`."""

    async def video(self, provider_id: str, req: ActionRequest) -> VideoOutcome:
        outcome = await super().video(provider_id, req)
        return outcome.model_copy(update={"ttfb_ms": FIRST_BYTE_MS})


def _per_frame(ctx: Context, output: Any) -> ChargeDraft:
    return ChargeDraft(amount_microcredits=FRAME_PRICE * len(output["frames"]))


@dataclass
class App:
    runtime: Runtime
    http: httpx.AsyncClient
    reel: Reel

    async def user(self, key: str | None = None, plan: str | None = None) -> dict[str, str]:
        issued = await self.runtime.security.issuer.apply(CITY, "u1", {"plan": plan} if plan else None)
        headers = {"Authorization": f"Bearer {issued.user_token}"}
        return {**headers, "Idempotency-Key": key} if key is not None else headers

    async def video(self, prompt: str, key: str | None = None, plan: str | None = None) -> httpx.Response:
        body = {"model": "reel", "prompt": prompt}
        return await self.http.post("/v1/ai/video", json=body, headers=await self.user(key, plan))

    async def balance(self) -> tuple[int, int]:
        value = await self.runtime.ledger.balance(f"{CITY}/u1")
        return value.balance, value.held

    async def usage(self) -> list[Any]:
        async with self.runtime.db.connect() as conn:
            return list(await conn.execute(select(usage_records).order_by(usage_records.c.created_at_ms)))


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    reel = Reel("reel")
    ai = AIService().use(reel.model("reel", default="video", bill=_per_frame, hold_microcredits=HOLD))
    quota = Quota(id="metered", metadata={"plan": "metered"}, requests_per_minute=5)
    federation = Federation(name="videos", quotas=[quota]).use(ai)
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key="test-admin")
    runtime = await open_local_runtime(federation, settings)
    await runtime.cities.create("Shop", city_id=CITY)
    await runtime.refresh()
    await runtime.ledger.credit(f"seed-{uuid.uuid4().hex}", f"{CITY}/u1", CREDIT)
    transport = httpx.ASGITransport(app=create_app(runtime, manage_runtime=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://downcity.test", timeout=30) as http:
        yield App(runtime, http, reel)
    await runtime.stop()


async def test_a_video_answer_names_its_model_and_the_charge_its_bill_made_from_the_frames(app: App) -> None:
    response = await app.video("ab cd ef")

    assert (response.status_code, response.json()) == (
        200,
        {
            "frames": ["ab", "cd", "ef"],
            "metadata": {
                "model": "reel",
                "charge": {
                    "amount_microcredits": 3 * FRAME_PRICE,
                    "user_id": None,
                    "ref": None,
                    "note": None,
                    "metadata": {},
                },
            },
        },
    )
    assert await app.balance() == (CREDIT - 3 * FRAME_PRICE, 0)


async def test_a_failed_video_releases_its_hold_writes_an_error_row_and_frees_its_key(app: App) -> None:
    app.reel.failure = DowncityHTTPError(503, "upstream_unavailable", "the studio is closed")

    failed = await app.video("ab cd", key="v-fail")
    retried = await app.video("ab cd", key="v-fail")

    error = {"error": {"type": "upstream_unavailable", "message": "the studio is closed"}}
    assert [(r.status_code, r.json()) for r in (failed, retried)] == [(503, error), (503, error)]
    assert app.reel.calls == 2
    assert [(row.status, row.http_status, row.error_type) for row in await app.usage()] == [
        ("error", 503, "upstream_unavailable")
    ] * 2
    assert await app.balance() == (CREDIT, 0)


async def test_a_videos_usage_row_records_its_time_to_first_byte(app: App) -> None:
    assert isinstance(app.runtime.gateway, LocalGateway)
    app.runtime.gateway = FirstByteTimed(app.runtime.gateway.runners)

    response = await app.video("ab")

    [row] = await app.usage()
    assert (response.status_code, row.status, row.ttfb_ms) == (200, "ok", FIRST_BYTE_MS)


async def test_a_videos_usage_row_carries_its_idempotency_key_scoped_to_the_video_pathway(app: App) -> None:
    response = await app.video("ab", key="v-scope")

    [row] = await app.usage()
    assert (response.status_code, row.idempotency_key) == (200, key_hash(CITY, "u1", "video", "v-scope"))


async def test_a_video_answer_carries_its_quotas_rate_limit_headers(app: App) -> None:
    response = await app.video("ab", plan="metered")

    assert response.status_code == 200
    assert (response.headers["x-ratelimit-limit-requests"], response.headers["x-ratelimit-remaining-requests"]) == (
        "5",
        "4",
    )
