"""Billing through the ingress and the Ledger actor under concurrency: no overdraft, no double charge."""

from __future__ import annotations

import asyncio

import pytest

from downcity.store import Database
from tests.integration.conftest import ServedApp
from tests.integration.test_ai_routes import user_client

pytestmark = pytest.mark.ray

PRICE = 500
AFFORDABLE = 57
CALLS = 200


async def test_200_concurrent_calls_with_balance_for_57_charge_exactly_57(served: ServedApp) -> None:
    city_id, user_id, token = await served.new_user(credit=AFFORDABLE * PRICE)
    async with user_client(served, token) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/ai/text", json={"model": "deepseek-flat", "prompt": f"call {i}"}) for i in range(CALLS))
        )
        balance = (await client.get("/v1/balance/me")).json()
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == AFFORDABLE
    assert statuses.count(402) == CALLS - AFFORDABLE
    account = f"{city_id}/{user_id}"
    assert balance == {
        "city_id": city_id,
        "user_id": user_id,
        "account_id": account,
        "balance": 0,
        "held": 0,
        "available": 0,
    }
    query = {"city_id": city_id, "user_id": user_id, "limit": 500}
    history = await served.admin.get("/v1/balance/history", params=query)
    charges = [e for e in history.json()["items"] if e["kind"] == "charge"]
    assert len(charges) == AFFORDABLE
    assert min(e["balance_after_microcredits"] for e in history.json()["items"]) == 0


async def test_admin_credit_replay_is_applied_once(served: ServedApp) -> None:
    city_id, user_id, token = await served.new_user()
    body = {"city_id": city_id, "user_id": user_id, "amount_microcredits": 1_234, "idempotency_key": f"topup-{user_id}"}
    replies = await asyncio.gather(*(served.admin.post("/v1/balance/credit", json=body) for _ in range(20)))
    assert {r.json()["id"] for r in replies} == {replies[0].json()["id"]}
    conflicting = await served.admin.post("/v1/balance/credit", json={**body, "amount_microcredits": 999})
    assert conflicting.status_code == 409
    async with user_client(served, token) as client:
        assert (await client.get("/v1/balance/me")).json()["balance"] == 1_234


async def test_balance_routes_are_admin_only(served: ServedApp) -> None:
    city_id, user_id, token = await served.new_user()
    async with user_client(served, token) as client:
        forbidden = await client.post(
            "/v1/balance/credit",
            json={"city_id": city_id, "user_id": user_id, "amount_microcredits": 5, "idempotency_key": "x"},
        )
        other = await client.get("/v1/balance/get", params={"city_id": city_id, "user_id": user_id})
    assert (forbidden.status_code, other.status_code) == (403, 403)


async def test_debit_beyond_the_available_balance_is_402(served: ServedApp) -> None:
    city_id, user_id, _ = await served.new_user(credit=100)
    body = {"city_id": city_id, "user_id": user_id, "amount_microcredits": 101, "idempotency_key": f"d-{user_id}"}
    response = await served.admin.post("/v1/balance/debit", json=body)
    assert response.status_code == 402
    assert response.json()["error"]["type"] == "insufficient_balance"


async def test_usage_rows_link_to_their_ledger_entries(served: ServedApp) -> None:
    from sqlalchemy import select

    from downcity.store.schema import ledger_entries, usage_records

    _, user_id, token = await served.new_user(credit=10_000)
    async with user_client(served, token) as client:
        await client.post("/v1/ai/text", json={"model": "deepseek-flat", "prompt": "linked"})
    db = Database(served.database_url)
    try:
        async with db.connect() as conn:
            usage = (await conn.execute(select(usage_records).where(usage_records.c.user_id == user_id))).one()
            entry = (
                await conn.execute(
                    select(ledger_entries)
                    .where(ledger_entries.c.user_id.endswith(f"/{user_id}"))
                    .where(ledger_entries.c.kind == "charge")
                )
            ).one()
    finally:
        await db.dispose()
    assert usage.ledger_entry_key == entry.idempotency_key
    assert usage.charge_microcredits == entry.amount_microcredits == PRICE
