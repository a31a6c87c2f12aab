"""Quotas on the real local Ray cluster, over HTTP, with two ingress replicas admitting through one Quota actor.

An app of its own serves `tests.integration.quota_federation` (its cities, tokens and keys on a PostgreSQL
database of its own; the cluster's one Ledger actor and one Quota actor are the session app's): exactly `rpm`
calls of a plan pass a storm of concurrent calls and the rest get 429 with OpenAI's headers; the next window (the
Quota actor's clock moved a minute on) admits again; a TPM claim is trued up to the tokens used; a daily credit
budget stops at exactly the budget; one city's limits never touch another's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from actors.app import AppArgs
from actors.quotas import QUOTA_ACTOR_NAME
from actors.serving import RAY_NAMESPACE
from downcity.runtime import bootstrap
from downcity.settings import Settings
from downcity.store.database import now_ms
from tests.conftest import TEST_ADMIN_KEY, DatabaseFactory
from tests.integration.conftest import ServedApp, deploy_beside, eventually
from tests.integration.quota_federation import DAILY_CALLS, PER_REQUEST, RPM, TPM

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

FEDERATION = "tests.integration.quota_federation:federation"
APP = "downcity-quotas"
PREFIX = "/quotas"
INGRESS_REPLICAS = 2
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
CREDIT = 10_000_000


@pytest.fixture(scope="module")
async def quota_app(
    served: ServedApp,
    serve_port: int,
    database_factory: DatabaseFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServedApp]:
    """The quota app on a database of its own, deployed with a deadline that allows for a loaded machine.

    It asks for the session app first: that app's ingress creates the cluster's Ledger and Quota actors on the
    session database, which every later test reads whatever order the tests run in.
    """
    database_url = await database_factory.url("postgresql")
    data_dir = str(tmp_path_factory.mktemp("quotas"))
    await bootstrap(Settings.with_env_secrets(AppArgs(federation=FEDERATION, database_url=database_url).settings()))
    await asyncio.to_thread(
        deploy_beside, FEDERATION, APP, PREFIX, database_url, data_dir, ingress_replicas=INGRESS_REPLICAS
    )
    url = f"http://127.0.0.1:{serve_port}{PREFIX}"
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}, timeout=60
    ) as admin:
        stored = await admin.post("/v1/env/set", json={"key": "DEEPSEEK_API_KEY", "value": "sk-quota-test-123456"})
        assert stored.status_code == 200, stored.text
        app = ServedApp(url=url, database_url=database_url, admin=admin)
        _, _, token = await app.new_user(credit=CREDIT)
        # Provider replicas read a new key within a second or so: a call without a quota tells when.
        await eventually(lambda: storm(url, token, 1), lambda replies: replies[0].status_code == 200, 60)
        # The windows' clock holds still, so no storm straddles two minutes; tests move it with advance_clock.
        quota_actor = ray.get_actor(QUOTA_ACTOR_NAME, namespace=RAY_NAMESPACE)
        await quota_actor.freeze_clock.remote(now_ms())
        yield app
        await quota_actor.freeze_clock.remote(None)
    serve.delete(APP)


async def user(served: ServedApp, plan: str, city_id: str | None = None) -> tuple[str, str, str]:
    return await served.new_user(city_id=city_id, credit=CREDIT, metadata={"plan": plan})


async def storm(url: str, token: str, calls: int, **body: Any) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=calls)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        headers = {"Authorization": f"Bearer {token}"}
        payload = {"prompt": "quota storm", **body}
        return list(
            await asyncio.gather(*(client.post("/v1/ai/text", json=payload, headers=headers) for _ in range(calls)))
        )


async def advance_quota_clock(ms: int) -> None:
    actor = ray.get_actor(QUOTA_ACTOR_NAME, namespace=RAY_NAMESPACE)
    await actor.advance_clock.remote(ms)


async def consumption(served: ServedApp, city_id: str, metric: str) -> int:
    listed = await served.admin.get("/v1/quotas/list", params={"city_id": city_id})
    assert listed.status_code == 200, listed.text
    return sum(int(use["used"]) for use in listed.json()["consumption"] if use["metric"] == metric)


async def test_rpm_admits_exactly_its_limit_across_replicas_then_the_next_window(quota_app: ServedApp) -> None:
    _, _, token = await user(quota_app, "starter")

    replies = await storm(quota_app.url, token, 100)

    statuses = [reply.status_code for reply in replies]
    assert (statuses.count(200), statuses.count(429)) == (RPM, 100 - RPM)
    refused = [reply for reply in replies if reply.status_code == 429]
    assert {reply.json()["error"]["type"] for reply in refused} == {"rate_limited"}
    assert all("retry-after" in reply.headers for reply in refused)
    assert all(all(name in reply.headers for name in RATE_HEADERS) for reply in replies)
    assert {reply.headers["x-ratelimit-limit-requests"] for reply in replies} == {str(RPM)}
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in replies if r.status_code == 200) == list(
        range(RPM)
    )

    await advance_quota_clock(60_000)
    (again,) = await storm(quota_app.url, token, 1)
    assert (again.status_code, again.headers["x-ratelimit-remaining-requests"]) == (200, str(RPM - 1))


async def test_one_citys_limits_never_touch_another(quota_app: ServedApp) -> None:
    _, _, first = await user(quota_app, "starter")
    _, _, second = await user(quota_app, "starter")

    both = await asyncio.gather(storm(quota_app.url, first, 40), storm(quota_app.url, second, 40))

    assert [[reply.status_code for reply in replies].count(200) for replies in both] == [RPM, RPM]


async def test_a_daily_credit_budget_stops_at_exactly_the_budget_under_200_concurrent_calls(
    quota_app: ServedApp,
) -> None:
    city_id, user_id, token = await user(quota_app, "daily")

    replies = await storm(quota_app.url, token, 200)

    statuses = [reply.status_code for reply in replies]
    assert (statuses.count(200), statuses.count(402)) == (DAILY_CALLS, 200 - DAILY_CALLS)
    assert {reply.json()["error"]["type"] for reply in replies if reply.status_code == 402} == {"budget_exceeded"}
    balance = await quota_app.admin.get("/v1/balance/get", params={"city_id": city_id, "user_id": user_id})
    assert balance.json()["balance"] == CREDIT - DAILY_CALLS * PER_REQUEST
    spent = await eventually(
        lambda: consumption(quota_app, city_id, "credits_day"), lambda used: used == DAILY_CALLS * PER_REQUEST
    )
    assert spent == DAILY_CALLS * PER_REQUEST


async def test_tpm_reserves_the_estimate_and_the_true_up_refunds_what_was_not_used(quota_app: ServedApp) -> None:
    city_id, _, token = await user(quota_app, "tpm")
    # max_tokens near the limit: a second call fits only once the first one's unused estimate is refunded.
    max_tokens = TPM - 100

    (first,) = await storm(quota_app.url, token, 1, max_tokens=max_tokens)

    assert first.status_code == 200, first.text
    usage = first.json()["metadata"]["usage"]
    used = usage["input_tokens"] + usage["output_tokens"]
    assert await eventually(lambda: consumption(quota_app, city_id, "tokens"), lambda tokens: tokens == used) == used
    (second,) = await storm(quota_app.url, token, 1, max_tokens=max_tokens)
    assert second.status_code == 200, second.text
