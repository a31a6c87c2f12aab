"""Credit leases on the real local Ray cluster: two ingress replicas admitting billed calls over HTTP.

A copy of the example Federation is deployed beside the session's app with two ingress replicas, once with leases
on and once with every call on its own hold; both share the session's Ledger actor and PostgreSQL database. The
leased app reaches its provider replicas over the byte relay (`provider_hop: relay`), the per-call one over Serve
handle calls (the default), so each money test here holds on both provider hops.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
import ray
from ray import serve
from sqlalchemy import func, select

from actors.gateway import relay_token, router_picker
from actors.ledger import get_ledger
from downcity.ai.context import CityInfo, UserInfo
from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import ActionRequest
from downcity.gateway.relay import TOKEN_HEADER, RelayClient
from downcity.secrets import MasterKey
from downcity.settings import Settings
from downcity.store import Database
from downcity.store.database import now_ms
from downcity.store.schema import balances, holds, ledger_entries
from tests.conftest import TEST_MASTER_KEY
from tests.integration.conftest import ServedApp, deploy_beside, eventually

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

FEDERATION = "examples.federation:federation"
APP = "downcity-leases"
PREFIX = "/leases"
REPLICAS = 2
FLAT = 500
COVERED = 57
STORM = 200
# Leases of a replica that no call used for this long are returned; tests wait on that, not on a clock. Long
# enough that a replica killed right after its calls dies still holding its lease on a loaded machine.
IDLE_S = 3.0
# Past every hold's expiry: the session's Ledger expires holds 120 s after their last renewal.
AFTER_EXPIRY_MS = 121_000


@dataclass
class LeaseApp:
    """The two-replica app: its URL and whether its replicas take credit leases."""

    url: str
    leases: bool
    hop: str


@pytest.fixture(scope="module", params=[True, False], ids=["leases", "per-call-holds"])
def lease_app(
    request: pytest.FixtureRequest, served: ServedApp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LeaseApp]:
    leases = bool(request.param)
    hop = "relay" if leases else "handle"
    settings = {"lease_idle_s": IDLE_S, "provider_hop": hop}
    data_dir = str(tmp_path_factory.mktemp("leases"))
    deploy_beside(
        FEDERATION,
        APP,
        PREFIX,
        served.database_url,
        data_dir,
        ingress_replicas=REPLICAS,
        leases=leases,
        settings=settings,
    )
    yield LeaseApp(served.url + PREFIX, leases, hop)
    serve.delete(APP)


async def _account(db: Database, account: str) -> tuple[int, int]:
    query = select(balances.c.credits_microcredits, balances.c.held_microcredits).where(balances.c.user_id == account)
    async with db.connect() as conn:
        row = (await conn.execute(query)).one()
    return int(row[0]), int(row[1])


async def _charged(db: Database, account: str) -> tuple[int, int]:
    query = select(func.count(), func.coalesce(func.sum(ledger_entries.c.amount_microcredits), 0)).where(
        ledger_entries.c.user_id == account, ledger_entries.c.kind == "charge"
    )
    async with db.connect() as conn:
        row = (await conn.execute(query)).one()
    return int(row[0]), int(row[1])


async def _leases(db: Database, account: str) -> list[Any]:
    query = select(holds).where(holds.c.user_id == account, holds.c.owner.is_not(None))
    async with db.connect() as conn:
        return list((await conn.execute(query)).all())


async def _leases_and_account(db: Database, account: str) -> tuple[list[Any], tuple[int, int]]:
    """The account's leases and its balance and held credit, read from one snapshot."""
    leases = select(holds).where(holds.c.user_id == account, holds.c.owner.is_not(None))
    balance = select(balances.c.credits_microcredits, balances.c.held_microcredits).where(balances.c.user_id == account)
    async with db.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        await conn.begin()
        rows = list((await conn.execute(leases)).all())
        row = (await conn.execute(balance)).one()
    return rows, (int(row[0]), int(row[1]))


async def _text(client: httpx.AsyncClient, url: str, token: str) -> httpx.Response:
    body = {"model": "deepseek-flat", "prompt": "hello"}
    return await client.post(f"{url}/v1/ai/text", json=body, headers={"Authorization": f"Bearer {token}"})


async def test_200_concurrent_calls_against_a_balance_for_57_sell_exactly_57(
    lease_app: LeaseApp, served: ServedApp
) -> None:
    city_id, user_id, token = await served.new_user(credit=COVERED * FLAT)
    account = f"{city_id}/{user_id}"
    db = Database(served.database_url)
    try:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=STORM)) as client:
            answers = await asyncio.gather(*(_text(client, lease_app.url, token) for _ in range(STORM)))
        statuses = Counter(answer.status_code for answer in answers)
        refusals = {answer.json()["error"]["type"] for answer in answers if answer.status_code != 200}
        assert (statuses, refusals) == (Counter({200: COVERED, 402: STORM - COVERED}), {"insufficient_balance"})
        # Leases are returned once idle: then nothing is held and every credit was spent exactly once.
        assert await eventually(lambda: _account(db, account), lambda state: state[1] == 0) == (0, 0)
        assert await _charged(db, account) == (COVERED, COVERED * FLAT)
        leases = await _leases(db, account)
        assert {lease.status for lease in leases} == ({"released"} if lease_app.leases else set())
        assert bool(leases) is lease_app.leases
    finally:
        await db.dispose()


async def test_a_balance_too_small_for_a_lease_is_admitted_call_by_call(lease_app: LeaseApp, served: ServedApp) -> None:
    city_id, user_id, token = await served.new_user(credit=3 * FLAT)
    account = f"{city_id}/{user_id}"
    db = Database(served.database_url)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            statuses = [(await _text(client, lease_app.url, token)).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 402, 402]
        assert await _account(db, account) == (0, 0)
        assert await _leases(db, account) == []
        query = select(func.count()).where(holds.c.user_id == account, holds.c.status == "settled")
        async with db.connect() as conn:
            assert (await conn.execute(query)).scalar_one() == 3
    finally:
        await db.dispose()


async def test_streams_are_charged_exactly_on_either_provider_hop(lease_app: LeaseApp, served: ServedApp) -> None:
    city_id, user_id, token = await served.new_user(credit=10 * FLAT)
    account = f"{city_id}/{user_id}"
    headers = {"Authorization": f"Bearer {token}"}
    db = Database(served.database_url)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            for path, body in (
                ("/v1/ai/stream", {"model": "deepseek-flat", "prompt": "one two"}),
                ("/v1/ai/chat/completions", {"model": "deepseek-flat", "stream": True, "messages": [_HELLO]}),
            ):
                answer = await client.post(f"{lease_app.url}{path}", json=body, headers=headers)
                assert answer.status_code == 200, answer.text
                assert answer.text.rstrip().endswith("data: [DONE]"), (lease_app.hop, path, answer.text[-200:])
        assert await _charged(db, account) == (2, 2 * FLAT)

        def settled(state: tuple[list[Any], tuple[int, int]]) -> bool:
            return state[1][0] == 8 * FLAT and not any(lease.status == "held" for lease in state[0])

        # A leased app's unspent lease goes back once its replicas are idle: then nothing is held.
        _, balance = await eventually(lambda: _leases_and_account(db, account), settled)
        assert balance == (8 * FLAT, 0)
    finally:
        await db.dispose()


_HELLO = {"role": "user", "content": "hello"}


def _reverse(prompt: str) -> ActionRequest:
    return ActionRequest(
        request_id="relay-test",
        pathway="text",
        model_id="reverse",
        input={"prompt": prompt},
        user=UserInfo(user_id="u-relay"),
        city=CityInfo(city_id="c-relay"),
    )


@pytest.mark.parametrize("lease_app", [True], ids=["leases"], indirect=True)
async def test_a_relay_replica_picked_by_the_router_runs_actions_for_the_token_holder_only(lease_app: LeaseApp) -> None:
    assert lease_app.hop == "relay"
    pick = router_picker({"local-tools": serve.get_deployment_handle("provider-local-tools", app_name=APP)})
    host, port = await pick("local-tools")
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {TOKEN_HEADER: "not the token"}):
            async with session.post(f"http://{host}:{port}/text", data=b"not a pickle", headers=headers) as answer:
                assert answer.status == 401
    client = RelayClient(pick, relay_token(MasterKey.load(Settings(master_key=TEST_MASTER_KEY))))
    try:
        outcome = await client.text("local-tools", _reverse("abc"))
        assert outcome.output.parts[0].model_dump()["text"] == "cba"
        with pytest.raises(DowncityHTTPError) as unknown:
            await client.text("nobody", _reverse("abc"))
        assert (unknown.value.status, unknown.value.message) == (503, "no deployment for provider 'nobody'")
    finally:
        await client.aclose()


@pytest.mark.parametrize("lease_app", [True], ids=["leases"], indirect=True)
async def test_a_killed_replicas_leases_expire_and_leave_the_balance_exact(
    lease_app: LeaseApp, served: ServedApp
) -> None:
    credit = 1_000 * FLAT
    city_id, user_id, token = await served.new_user(credit=credit)
    account = f"{city_id}/{user_id}"
    db = Database(served.database_url)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            held_by: set[str] = set()
            answered = 0
            async with asyncio.timeout(120):
                # Calls are spread by HAProxy; keep calling until both replicas hold a lease at once.
                while len(held_by) < REPLICAS:
                    answers = await asyncio.gather(*(_text(client, lease_app.url, token) for _ in range(16)))
                    assert {answer.status_code for answer in answers} == {200}
                    answered += len(answers)
                    held_by = {lease.owner for lease in await _leases(db, account) if lease.status == "held"}
        victim = sorted(held_by)[0]
        replica = ray.get_actor(f"SERVE_REPLICA::{victim}", namespace="serve")
        ray.kill(replica, no_restart=True)
        with pytest.raises(ray.exceptions.RayActorError):
            await replica.__ray_ready__.remote()

        def only_the_victims_leases_are_held(state: tuple[list[Any], tuple[int, int]]) -> bool:
            return {lease.owner for lease in state[0] if lease.status == "held"} == {victim}

        leases, balance = await eventually(lambda: _leases_and_account(db, account), only_the_victims_leases_are_held)
        stranded = sum(lease.amount_microcredits for lease in leases if lease.status == "held")
        charged = await _charged(db, account)
        assert charged == (answered, answered * FLAT)
        assert balance == (credit - answered * FLAT, stranded)
        assert stranded > 0
        # The sweep at a time past the leases' expiry: what the Ledger's own sweeper does two minutes on.
        ledger = get_ledger(served.database_url)
        await ledger.sweep_expired_holds(now_ms() + AFTER_EXPIRY_MS)
        assert await _account(db, account) == (credit - answered * FLAT, 0)
        assert {lease.status for lease in await _leases(db, account)} == {"released"}
        assert await _charged(db, account) == charged
    finally:
        await db.dispose()
