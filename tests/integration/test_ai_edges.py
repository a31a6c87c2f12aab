"""Edges of the AI routes on the real cluster: video, upstream timeouts, client disconnects, replays."""

from __future__ import annotations

import pytest

from tests.integration.conftest import ServedApp, eventually
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


async def test_a_client_that_leaves_mid_stream_pays_for_the_words_it_received(served: ServedApp) -> None:
    city_id, user_id, token = await served.new_user(credit=100_000)
    words = " ".join(f"w{i}" for i in range(40))
    body = {"prompt": f"{words} [[slow-stream:100]]"}
    async with user_client(served, token) as client, client.stream("POST", "/v1/ai/stream", json=body) as response:
        async for line in response.aiter_lines():
            if '"delta":"Echo: "' in line or '"delta":"w0 "' in line:
                break
    rows = await eventually(lambda: usage_rows(served, user_id), bool)
    async with user_client(served, token) as client:
        balance = (await client.get("/v1/balance/me")).json()
    [row] = rows
    assert (row["pathway"], row["status"], row["http_status"], row["usage_source"]) == (
        "stream",
        "cancelled",
        499,
        "estimated",
    )
    charge = row["charge_microcredits"]
    assert isinstance(charge, int) and 0 < charge <= 2_000
    assert (balance["account_id"], balance["balance"], balance["held"]) == (f"{city_id}/{user_id}", 100_000 - charge, 0)


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
