"""The example Federation deployed once per session on the local Ray cluster, over real HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_ADMIN_KEY, DatabaseFactory, eventually, listen_port

__all__ = ["ServedApp", "eventually"]

APP_NAME = "downcity"
PROVIDER_KEY_ENV = "DEEPSEEK_API_KEY"
DEPLOY_DEADLINE_S = 60


@dataclass
class ServedApp:
    """A deployed Federation: its URL, database and an admin HTTP client."""

    url: str
    database_url: str
    admin: httpx.AsyncClient

    async def new_user(
        self, *, city_id: str | None = None, credit: int = 0, metadata: dict[str, object] | None = None
    ) -> tuple[str, str, str]:
        """A fresh city (unless given) and user with `credit` microcredits; returns (city_id, user_id, token)."""
        if city_id is None:
            city_id = f"c{uuid.uuid4().hex[:10]}"
            created = await self.admin.post("/v1/cities/create", json={"name": "Test city", "city_id": city_id})
            assert created.status_code == 200, created.text
        user_id = f"u{uuid.uuid4().hex[:10]}"
        if credit:
            credited = await self.admin.post(
                "/v1/balance/credit",
                json={
                    "city_id": city_id,
                    "user_id": user_id,
                    "amount_microcredits": credit,
                    "idempotency_key": f"seed-{user_id}",
                },
            )
            assert credited.status_code == 200, credited.text
        issued = await self.admin.post(
            "/v1/tokens/apply", json={"city_id": city_id, "user_id": user_id, "metadata": metadata or {}}
        )
        assert issued.status_code == 200, issued.text
        return city_id, user_id, str(issued.json()["user_token"])


def deploy(federation: str, database_url: str, data_dir: str, port: int) -> None:
    """Deploy `federation` with `actors.app:build` and wait until it serves."""
    from ray import serve

    from actors.app import AppArgs, build

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # /ready answers 200 only once a replica of every provider deployment reads the key the fixture stores.
    args = AppArgs(
        federation=federation, database_url=database_url, data_dir=data_dir, ready_requires_env=[PROVIDER_KEY_ENV]
    )
    serve.run(build(args), name=APP_NAME, route_prefix="/")


def deploy_beside(
    federation: str,
    name: str,
    prefix: str,
    database_url: str,
    data_dir: str,
    *,
    ingress_replicas: int = 1,
    leases: bool = False,
    settings: dict[str, Any] | None = None,
    deadline_s: float = 240,
) -> None:
    """`actors.app.compose` of `federation` as a second app `name` under `prefix`, with `ingress_replicas`
    ingress replicas (and `settings` over the args' own), back once they all run."""
    from ray import serve

    from actors.app import AppArgs, compose
    from downcity.runtime import load_federation

    args = AppArgs(federation=federation, database_url=database_url, data_dir=data_dir, leases=leases)
    app = compose(args, load_federation(federation), {**args.settings(), **(settings or {})}, ingress_replicas)
    serve.run(app, name=name, route_prefix=prefix)
    wait_for_ingress_replicas(name, ingress_replicas, deadline_s)


def running_ingress_replicas(name: str) -> int:
    """The RUNNING replicas of app `name`'s ingress deployment while the app runs and the deployment is healthy."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    status = serve.status().applications.get(name)
    if status is None or status.status != "RUNNING":
        return 0
    ingress = status.deployments.get("ingress")
    if ingress is None or ingress.status != "HEALTHY":
        return 0
    return int(ingress.replica_states.get(ReplicaState.RUNNING, 0))


def wait_for_ingress_replicas(name: str, replicas: int, deadline_s: float) -> None:
    """Block until app `name` runs exactly `replicas` ingress replicas (Serve reports no event for it)."""
    ends = time.monotonic() + deadline_s
    while running_ingress_replicas(name) != replicas:
        assert time.monotonic() < ends, f"{name} never ran {replicas} ingress replicas"
        time.sleep(0.2)


@pytest.fixture(scope="session")
def serve_port(ray_cluster: float) -> int:
    return listen_port()


@pytest.fixture(scope="session")
async def served(
    ray_cluster: float,
    serve_port: int,
    database_factory: DatabaseFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServedApp]:
    database_url = await database_factory.url("postgresql")
    data_dir = str(tmp_path_factory.mktemp("served"))
    await asyncio.wait_for(
        asyncio.to_thread(deploy, "examples.federation:federation", database_url, data_dir, serve_port),
        DEPLOY_DEADLINE_S,
    )
    url = f"http://127.0.0.1:{serve_port}"
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}, timeout=30
    ) as admin:
        stored = await admin.post("/v1/env/set", json={"key": PROVIDER_KEY_ENV, "value": "sk-example-key-123456"})
        assert stored.status_code == 200, stored.text
        # Ready once a replica of every provider deployment holds the key (they poll the env version every second).
        ready = await eventually(lambda: admin.get("/ready"), lambda response: response.status_code == 200)
        assert ready.json()["status"] == "ready", ready.text
        yield ServedApp(url=url, database_url=database_url, admin=admin)
