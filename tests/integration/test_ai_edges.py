"""Edges of the AI routes on the real cluster: video, upstream timeouts, client disconnects, replays."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import ServedApp
from tests.integration.test_ai_routes import usage_rows, user_client

pytestmark = pytest.mark.ray


async def test_video_route_runs_the_providers_video_action_and_bills_its_charge(served: ServedApp) -> None:
    _, _, token = await served.new_user(credit=10_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/video", json={"model": "reverse", "prompt": "a cat walks"})
        balance = await client.get("/v1/balance/me")
    assert response.status_code == 200, response.text
    assert response.json()["frames"] == ["sklaw", "tac", "a"]
    assert response.json()["metadata"]["charge"]["amount_microcredits"] == 3_000
    assert balance.json()["balance"] == 7_000


async def test_video_on_a_model_without_video_is_422(served: ServedApp) -> None:
    _, _, token = await served.new_user(credit=10_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/video", json={"model": "deepseek-chat", "prompt": "x"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "model"


async def test_upstream_timeout_is_504_and_releases_the_hold(served: ServedApp) -> None:
    _, _, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        response = await client.post("/v1/ai/text", json={"prompt": "slow [[sleep:3000]]"})
        balance = await client.get("/v1/balance/me")
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "upstream_timeout"
    assert balance.json()["held"] == 0
    assert balance.json()["balance"] == 100_000


async def test_client_disconnect_mid_stream_releases_the_hold_and_records_a_cancelled_call(served: ServedApp) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    words = " ".join(f"w{i}" for i in range(40))
    body = {"prompt": f"{words} [[slow-stream:100]]"}
    async with user_client(served, token) as client, client.stream("POST", "/v1/ai/stream", json=body) as response:
        received = 0
        async for _ in response.aiter_lines():
            received += 1
            if received >= 4:
                break
    rows: list[dict[str, object]] = []
    for _ in range(50):
        rows = await usage_rows(served, user_id)
        if rows:
            break
        await asyncio.sleep(0.2)
    async with user_client(served, token) as client:
        balance = (await client.get("/v1/balance/me")).json()
    assert [(r["pathway"], r["status"], r["http_status"]) for r in rows] == [("stream", "cancelled", 499)]
    assert balance == {"user_id": user_id, "balance": 100_000, "held": 0, "available": 100_000}


async def test_idempotent_replay_returns_the_first_response_without_a_second_charge(served: ServedApp) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    headers = {"Idempotency-Key": "order-42"}
    async with user_client(served, token) as client:
        first = await client.post("/v1/ai/text", json={"prompt": "once only"}, headers=headers)
        second = await client.post("/v1/ai/text", json={"prompt": "once only"}, headers=headers)
        reused = await client.post("/v1/ai/text", json={"prompt": "something else"}, headers=headers)
        balance = (await client.get("/v1/balance/me")).json()
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert reused.status_code == 409
    charge = first.json()["metadata"]["charge"]["amount_microcredits"]
    assert balance["balance"] == 100_000 - charge
    assert len(await usage_rows(served, user_id)) == 1
