"""A head and two provider nodes on this machine (`ray.cluster_utils.Cluster`): placement, scaling, node loss.

`ray.init` runs once per process and the test session already has a cluster, so tests/integration/
test_multinode.py runs this as a script: `python multinode_scenario.py DATABASE_URL DATA_DIR`, with DOWNCITY_MASTER_KEY,
DOWNCITY_ADMIN_KEY, PYTHONPATH (the repository) and RAY_TMPDIR (a short private dir) in its environment. It
deploys serve_config.yaml with the placement edits of docs/operators/scale-out.md, the way `serve deploy`
does, and prints one JSON line with what it observed; the test asserts on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
import yaml
from ray import serve
from ray.cluster_utils import Cluster
from ray.serve._private.common import ReplicaState
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema
from sqlalchemy import select

from actors.placement import HEAD_PINNED
from actors.serving import RAY_NAMESPACE, free_port
from downcity.calls.replays import key_hash
from downcity.store import Database
from downcity.store.schema import balances, ledger_entries, usage_records

ROOT = Path(__file__).resolve().parents[2]
APP = "downcity"
SCALED = "provider-local-tools"
UNSCALED = {"provider-deepseek": 1, "provider-deepseek-images": 1}
PROVIDER_SHARE = 0.01
CREDIT = 1_000_000_000
LOAD_WORKERS = 4
LOAD_PAUSE_S = 0.05
MAX_REQUESTS_PER_PHASE = 3_000
STEADY_DEADLINE_S = 90.0
# Fast node-death detection: with Ray's defaults a silent node is declared dead only after tens of seconds.
HEAD_SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def cluster_config(database_url: str, data_dir: str, port: int, local_tools_replicas: int) -> dict[str, Any]:
    """serve_config.yaml with the docs' placement edits, one proxy (the nodes share this machine's ports)."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(database_url=database_url, data_dir=data_dir, provider_resources={"provider": PROVIDER_SHARE})
    for deployment in app["deployments"]:
        if deployment["name"] == "ingress":
            deployment["ray_actor_options"] = {"num_cpus": 0, "resources": dict(HEAD_PINNED)}
        else:
            deployment["health_check_period_s"] = 1
        if deployment["name"] == SCALED:
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = local_tools_replicas
    return config


def deploy(config: dict[str, Any]) -> None:
    """What `serve deploy` asks of the controller: apply the whole config."""
    client = _get_global_client()
    assert client is not None, "serve.start() first"
    client.deploy_apps(ServeDeploySchema.model_validate(config))


def steady(replicas: dict[str, int]) -> bool:
    """Whether the app runs healthy with exactly that many RUNNING replicas of each named deployment."""
    status = serve.status().applications.get(APP)
    if status is None or status.status != "RUNNING":
        return False
    if any(d.status != "HEALTHY" for d in status.deployments.values()):
        return False
    running = {name: d.replica_states.get(ReplicaState.RUNNING, 0) for name, d in status.deployments.items()}
    return all(running.get(name) == n for name, n in replicas.items())


def wait_steady(replicas: dict[str, int], names: dict[str, str], lost: str | None = None) -> float:
    """Wait until `steady(replicas)` and no live replica is on the `lost` node; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < STEADY_DEADLINE_S:
        where = placement(names)
        if steady(replicas) and all(lost not in where.get(name, []) for name in replicas):
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"no steady {replicas} within {STEADY_DEADLINE_S} s: {serve.status()} {placement(names)}")


def placement(node_names: dict[str, str]) -> dict[str, list[str]]:
    """The node name of every live replica and control actor, by deployment or actor name."""
    where: dict[str, list[str]] = {}
    for actor in ray._private.state.actors().values():
        name = actor["Name"]
        if actor["State"] != "ALIVE" or not name:
            continue
        if name.startswith("SERVE_REPLICA::"):
            name = name.split("#")[1]
        elif not name.startswith("downcity-"):
            continue
        where.setdefault(name, []).append(node_names.get(actor["Address"]["NodeID"], "gone"))
    return {name: sorted(nodes) for name, nodes in sorted(where.items())}


@dataclass
class Load:
    """Bounded text calls from a few workers until stopped; every outcome kept by idempotency key."""

    client: httpx.AsyncClient
    token: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    outcomes: dict[str, tuple[int, int]] = field(default_factory=dict)

    async def run(self, deadline_s: float) -> None:
        """Send until `stop` is set, the phase's request cap is reached or `deadline_s` passes."""
        ends = time.monotonic() + deadline_s
        await asyncio.gather(*(self._worker(ends) for _ in range(LOAD_WORKERS)))

    async def _worker(self, ends: float) -> None:
        while not self.stop.is_set() and time.monotonic() < ends and len(self.outcomes) < MAX_REQUESTS_PER_PHASE:
            await self.one()
            await asyncio.sleep(LOAD_PAUSE_S)

    async def one(self) -> int:
        """One call; returns its HTTP status (0 for a transport error)."""
        key = uuid.uuid4().hex
        headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": key}
        body = {"model": "reverse", "prompt": f"scale out {key[:8]}"}
        try:
            reply = await self.client.post("/v1/ai/text", json=body, headers=headers)
        except httpx.HTTPError:
            self.outcomes[key] = (0, 0)
            return 0
        charge = reply.json()["metadata"]["charge"]["amount_microcredits"] if reply.status_code == 200 else 0
        self.outcomes[key] = (reply.status_code, charge)
        return reply.status_code

    def statuses(self) -> dict[str, int]:
        """How many calls ended with each HTTP status."""
        return {str(code): count for code, count in sorted(Counter(s for s, _ in self.outcomes.values()).items())}


async def seed(client: httpx.AsyncClient) -> tuple[str, str, str]:
    """A city and a user with plenty of credit; returns (city_id, user_id, token)."""
    city_id, user_id = f"mn{uuid.uuid4().hex[:8]}", f"u{uuid.uuid4().hex[:8]}"
    created = await client.post("/v1/cities/create", json={"name": "Multinode", "city_id": city_id})
    credit = {
        "city_id": city_id,
        "user_id": user_id,
        "amount_microcredits": CREDIT,
        "idempotency_key": f"seed-{user_id}",
    }
    credited = await client.post("/v1/balance/credit", json=credit)
    issued = await client.post("/v1/tokens/apply", json={"city_id": city_id, "user_id": user_id})
    for reply in (created, credited, issued):
        reply.raise_for_status()
    return city_id, user_id, str(issued.json()["user_token"])


async def ledger_view(database_url: str, user_id: str) -> tuple[dict[str, int], int]:
    """The user's charges by the stored Idempotency-Key of their call (usage row → ledger entry), and balance."""
    db = Database(database_url)
    try:
        async with db.connect() as conn:
            charged = select(usage_records.c.idempotency_key, ledger_entries.c.amount_microcredits).join(
                ledger_entries, usage_records.c.ledger_entry_key == ledger_entries.c.idempotency_key
            )
            rows = await conn.execute(charged.where(usage_records.c.user_id == user_id))
            entries = {row.idempotency_key: row.amount_microcredits for row in rows}
            # The ledger keys accounts as `<city_id>/<user_id>`; test user ids are unique across cities.
            balance = (await conn.execute(select(balances).where(balances.c.user_id.endswith(f"/{user_id}")))).one()
    finally:
        await db.dispose()
    return entries, int(balance.credits_microcredits)


async def answered(load: Load, count: int, deadline_s: float = 60) -> None:
    """Wait until `load` has `count` outcomes, failing at the deadline."""
    async with asyncio.timeout(deadline_s):
        while len(load.outcomes) < count:  # noqa: ASYNC110 - the workers signal nothing per call
            await asyncio.sleep(0.05)


async def under_load(load: Load, action: Any, calls_after: int) -> float:
    """Run `load` while `action()` runs in a thread: from its first 20 calls on, until `calls_after` more
    calls were answered after the action; returns the seconds `action` took."""
    sender = asyncio.create_task(load.run(STEADY_DEADLINE_S + 60))
    await answered(load, 20)
    took: float = await asyncio.to_thread(action)
    await answered(load, len(load.outcomes) + calls_after)
    load.stop.set()
    await sender
    return took


async def scenario(cluster: Cluster, database_url: str, data_dir: str, port: int) -> dict[str, Any]:
    """Deploy, check placement, scale 1 → 3 under load, lose a provider node under load; report it all."""
    provider_nodes = sorted(cluster.worker_nodes, key=lambda node: node.node_id)
    names = node_names(cluster)
    result: dict[str, Any] = {}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Bearer {admin_key()}"}
    ) as client:
        city_id, user_id, token = await seed(client)
        result["placement_deployed"] = placement(names)

        scaling = Load(client, token)

        def scale_up() -> float:
            deploy(cluster_config(database_url, data_dir, port, 3))
            return wait_steady({SCALED: 3}, names)

        result["scale_s"] = await under_load(scaling, scale_up, 100)
        result["scale_statuses"] = scaling.statuses()
        result["placement_scaled"] = placement(names)

        lost = max(provider_nodes, key=lambda n: result["placement_scaled"][SCALED].count(names[n.node_id]))
        result["lost_node"] = names[lost.node_id]
        losing = Load(client, token)

        def lose_node() -> float:
            cluster.remove_node(lost, allow_graceful=False)
            return wait_steady({**UNSCALED, SCALED: 3}, names, result["lost_node"])

        result["recover_s"] = await under_load(losing, lose_node, 100)
        result["loss_statuses"] = losing.statuses()
        result["placement_recovered"] = placement(names)
        after = Load(client, token)
        result["after_statuses"] = Counter([str(await after.one()) for _ in range(20)])

        accepted = {
            key_hash(city_id, user_id, "text", key): charge
            for load in (scaling, losing, after)
            for key, (status, charge) in load.outcomes.items()
            if status == 200
        }
        entries, balance = await ledger_view(database_url, user_id)
        result["accepted_calls"] = len(accepted)
        result["accepted_charges_in_ledger"] = all(entries.get(key) == amount for key, amount in accepted.items())
        result["unanswered_entries"] = len(set(entries) - set(accepted))
        result["balance_matches"] = balance == CREDIT - sum(entries.values())
        result["charged_for_accepted"] = sum(accepted.values())
        result["charged_in_ledger"] = sum(entries.values())
    return result


def admin_key() -> str:
    """The admin key the cluster's processes were started with."""
    return os.environ["DOWNCITY_ADMIN_KEY"]


def node_names(cluster: Cluster) -> dict[str, str]:
    """`head`, `provider-0` and `provider-1` by node id (in node id order)."""
    providers = sorted(node.node_id for node in cluster.worker_nodes)
    assert cluster.head_node is not None
    return {cluster.head_node.node_id: "head"} | {node_id: f"provider-{i}" for i, node_id in enumerate(providers)}


def start_cluster() -> Cluster:
    """A head with no custom resources and two nodes advertising `provider: 1`, as in cluster.yaml."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": HEAD_SYSTEM_CONFIG},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={"provider": 1})
    cluster.wait_for_nodes()
    return cluster


def main() -> None:
    """Run the scenario and print its result as one JSON line."""
    database_url, data_dir = sys.argv[1], sys.argv[2]
    started = time.monotonic()
    cluster = start_cluster()
    try:
        ray.init(address=cluster.address, namespace=RAY_NAMESPACE, log_to_driver=False)
        port = free_port()
        config = cluster_config(database_url, data_dir, port, 1)
        serve.start(proxy_location="HeadOnly", http_options=config["http_options"])
        deploy(config)
        deploy_s = wait_steady({**UNSCALED, SCALED: 1}, node_names(cluster))
        result = asyncio.run(scenario(cluster, database_url, data_dir, port))
        result["deploy_s"] = deploy_s
        result["total_s"] = time.monotonic() - started
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
    print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
