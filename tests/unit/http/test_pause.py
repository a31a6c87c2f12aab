"""Pausing and activating a city take effect at once on the replica that served the change."""

from __future__ import annotations

from tests.unit.http.fakes import CITY_ID, App


async def test_a_paused_city_is_refused_by_the_next_call_on_the_same_replica(app: App) -> None:
    async with app.admin() as admin, app.user() as user:
        paused = await admin.post("/v1/cities/pause", json={"city_id": CITY_ID})
        refused = await user.post("/v1/ai/text", json={"prompt": "hi"})

    assert paused.json()["status"] == "paused"
    assert refused.status_code == 403
    assert refused.json() == {"error": {"type": "city_paused", "message": "city 'acme' is paused"}}
    assert app.upstream.calls == []


async def test_an_activated_city_is_served_by_the_next_call_on_the_same_replica(app: App) -> None:
    async with app.admin() as admin, app.user() as user:
        await admin.post("/v1/cities/pause", json={"city_id": CITY_ID})
        await user.post("/v1/ai/text", json={"prompt": "hi"})
        activated = await admin.post("/v1/cities/activate", json={"city_id": CITY_ID})
        served = await user.post("/v1/ai/text", json={"prompt": "hi"})

    assert activated.json()["status"] == "active"
    assert served.status_code == 200
    assert len(app.upstream.calls) == 1
