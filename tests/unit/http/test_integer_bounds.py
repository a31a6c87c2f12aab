"""Integer bounds at the edge: ids that fit a BIGINT, and a balance cap refused before the ledger writes."""

from __future__ import annotations

from pathlib import Path

from downcity.settings import MAX_BALANCE_MICROCREDITS
from tests.unit.http.fakes import CITY_ID, USER_ID, App, running_app


async def test_before_id_past_bigint_is_a_422_naming_it(app: App) -> None:
    async with app.admin() as client:
        response = await client.get(
            "/v1/balance/history", params={"city_id": CITY_ID, "user_id": USER_ID, "before_id": 2**63}
        )

    assert response.status_code == 422
    assert response.json()["error"] == {
        "type": "invalid_request",
        "message": "before_id: Input should be less than or equal to 9223372036854775807",
        "field": "before_id",
    }


async def test_before_id_at_bigint_max_is_accepted(app: App) -> None:
    async with app.admin() as client:
        response = await client.get(
            "/v1/balance/history", params={"city_id": CITY_ID, "user_id": USER_ID, "before_id": 2**63 - 1}
        )

    assert response.status_code == 200
    assert [entry["idempotency_key"] for entry in response.json()["items"]] == ["seed-0"]


async def test_a_credit_past_the_balance_cap_is_refused_and_writes_nothing(database_url: str, tmp_path: Path) -> None:
    async with running_app(database_url, tmp_path, balance=MAX_BALANCE_MICROCREDITS - 10) as app, app.admin() as client:
        body = {"city_id": CITY_ID, "user_id": USER_ID, "amount_microcredits": 11, "idempotency_key": "over"}
        refused = await client.post("/v1/balance/credit", json=body)
        filled = await client.post(
            "/v1/balance/credit", json={**body, "amount_microcredits": 10, "idempotency_key": "fill"}
        )
        balance = (await client.get("/v1/balance/get", params={"city_id": CITY_ID, "user_id": USER_ID})).json()[
            "balance"
        ]

    assert refused.status_code == 422
    assert refused.json()["error"] == {
        "type": "balance_cap_exceeded",
        "message": f"a balance may hold at most {MAX_BALANCE_MICROCREDITS} microcredits; this credit would exceed it",
        "field": "amount_microcredits",
    }
    assert filled.status_code == 200
    assert balance == MAX_BALANCE_MICROCREDITS
