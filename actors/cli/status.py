"""`downcity status`: Ray, the Serve applications and their replicas, and the Ledger and JobManager actors."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from actors.cli.lifecycle import DataDirOption, RunFile, resolve_data_dir
from actors.serving import RAY_NAMESPACE

PING_TIMEOUT_S = 10.0
# Serve names each replica actor `SERVE_REPLICA::<app>#<deployment>#<id>` in its own namespace.
SERVE_NAMESPACE = "serve"
REPLICA_PREFIX = "SERVE_REPLICA::"

console = Console(highlight=False, soft_wrap=True)


@dataclass
class ActorHealth:
    """One named actor and whether it answered."""

    actor: str
    healthy: bool
    detail: str


@dataclass
class Deployment:
    """A Serve deployment's status and its replicas by state."""

    name: str
    status: str
    replicas: dict[str, int]


@dataclass
class Application:
    """A Serve application and its deployments."""

    name: str
    status: str
    deployments: list[Deployment] = field(default_factory=list)


@dataclass
class ReplicaResilience:
    """One provider replica's circuit breaker and key pool (each replica keeps its own)."""

    replica: str
    provider: str
    breaker: dict[str, Any] | None
    keys: list[dict[str, Any]]


@dataclass
class ClusterStatus:
    """Everything `status` reports; healthy when every part is."""

    address: str
    nodes: int
    applications: list[Application]
    ledger: list[ActorHealth]
    job_manager: ActorHealth
    resilience: list[ReplicaResilience] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when every application runs, every deployment is healthy and every actor answered."""
        apps_ok = bool(self.applications) and all(
            app.status == "RUNNING" and all(d.status == "HEALTHY" for d in app.deployments) for app in self.applications
        )
        return apps_ok and bool(self.ledger) and all(a.healthy for a in self.ledger) and self.job_manager.healthy


def _ask(actor: str, method: str, namespace: str = RAY_NAMESPACE) -> Any:
    import ray

    handle = ray.get_actor(actor, namespace=namespace)
    return ray.get(getattr(handle, method).remote(), timeout=PING_TIMEOUT_S)


def _check(actor: str, method: str, namespace: str = RAY_NAMESPACE) -> tuple[bool, Any]:
    try:
        return True, _ask(actor, method, namespace)
    except Exception as exc:
        # Only the type: an actor error's text may carry its database URL, password included.
        return False, type(exc).__name__


def _ledger_health() -> list[ActorHealth]:
    import ray.util

    from actors.ledger import LEDGER_ACTOR_NAME

    # One actor, or one per shard named `<base>-<index>`.
    names = sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == RAY_NAMESPACE
        and (entry["name"] == LEDGER_ACTOR_NAME or entry["name"].startswith(f"{LEDGER_ACTOR_NAME}-"))
    )
    health = []
    for name in names:
        ok, answer = _check(name, "ping")
        health.append(ActorHealth(name, ok, "" if ok else str(answer)))
    return health


def _job_manager_health() -> ActorHealth:
    from actors.jobs import JOB_MANAGER_NAME

    ok, answer = _check(JOB_MANAGER_NAME, "stats")
    if not ok:
        return ActorHealth(JOB_MANAGER_NAME, False, str(answer))
    return ActorHealth(JOB_MANAGER_NAME, True, f"{answer['scheduled']} scheduled, {answer['in_flight']} in flight")


def provider_resilience() -> list[ReplicaResilience]:
    """Every provider replica's breakers and key pool, asked of the replica actors themselves."""
    import ray.util

    replicas = sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == SERVE_NAMESPACE
        and entry["name"].startswith(REPLICA_PREFIX)
        and entry["name"].split("#")[-2].startswith("provider-")
    )
    found = []
    for name in replicas:
        # Serve's per-replica stats hook, which `ProviderDeployment.record_routing_stats` answers.
        ok, stats = _check(name, "record_routing_stats", SERVE_NAMESPACE)
        state = stats.get("resilience") if ok and isinstance(stats, dict) else None
        if isinstance(state, dict):
            replica = name.removeprefix(REPLICA_PREFIX)
            found.append(ReplicaResilience(replica, state["provider"], state["breaker"], state["keys"]))
    return found


def _text(value: Any) -> str:
    # Serve's status dataclasses hold enum members or plain strings depending on where they were built.
    return str(getattr(value, "value", value))


def _applications() -> list[Application]:
    from ray import serve

    applications = []
    for name, app in sorted(serve.status().applications.items()):
        deployments = [
            Deployment(name=d_name, status=_text(d.status), replicas={_text(k): v for k, v in d.replica_states.items()})
            for d_name, d in sorted(app.deployments.items())
        ]
        applications.append(Application(name=name, status=_text(app.status), deployments=deployments))
    return applications


def snapshot() -> ClusterStatus:
    """Ask each part of the cluster this process is connected to how it is (blocking: call it off the loop)."""
    import ray

    nodes = len([node for node in ray.nodes() if node["Alive"]])  # type: ignore[no-untyped-call]
    return ClusterStatus(
        address=ray.get_runtime_context().gcs_address,
        nodes=nodes,
        applications=_applications(),
        ledger=_ledger_health(),
        job_manager=_job_manager_health(),
        resilience=provider_resilience(),
    )


def report(status: ClusterStatus) -> dict[str, Any]:
    """What `--json` prints (and the console's System page shows)."""
    return {"healthy": status.healthy, **asdict(status)}


def collect(address: str) -> ClusterStatus:
    """Connect to the cluster at `address` and ask each part how it is."""
    import ray

    ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False, logging_level=logging.ERROR)
    try:
        return snapshot()
    finally:
        ray.shutdown()


def _mark(ok: bool) -> str:
    return "[green]ok[/]" if ok else "[red]DOWN[/]"


def _print(status: ClusterStatus) -> None:
    console.print(f"Ray: {status.address}, {status.nodes} node(s) alive")
    table = Table(
        "application", "deployment", "status", "replicas", box=box.MINIMAL, show_edge=False, header_style="bold"
    )
    for app in status.applications:
        table.add_row(app.name, "", app.status, "")
        for d in app.deployments:
            replicas = ", ".join(f"{state} {count}" for state, count in sorted(d.replicas.items()))
            table.add_row("", d.name, d.status, replicas)
    console.print(table if status.applications else "[red]no Serve application is running[/]")
    if not status.ledger:
        console.print("Ledger: [red]DOWN[/] (no ledger actor)")
    for actor in [*status.ledger, status.job_manager]:
        kind = "JobManager" if actor is status.job_manager else "Ledger"
        detail = f" ({actor.detail})" if actor.detail else ""
        console.print(f"{kind} {actor.actor}: {_mark(actor.healthy)}{detail}")
    if status.resilience:
        _print_resilience(status.resilience)


def _breaker_text(breaker: dict[str, Any] | None) -> str:
    if breaker is None:
        return "-"
    if breaker["state"] == "open":
        return f"[red]open[/] (probe in {breaker['retry_in_s']:g} s)"
    failures = breaker["consecutive_failures"]
    return f"{breaker['state']}" + (f" ({failures} failing)" if failures else "")


def _print_resilience(replicas: list[ReplicaResilience]) -> None:
    table = Table("provider replica", "breaker", "keys", box=box.MINIMAL, show_edge=False, header_style="bold")
    for replica in replicas:
        keys = ", ".join(
            f"{key['key']}"
            + (f" resting {key['resting_s']:g} s" if key["resting_s"] else "")
            + (f" breaker {_breaker_text(key['breaker'])}" if "breaker" in key else "")
            for key in replica.keys
        )
        table.add_row(replica.replica, _breaker_text(replica.breaker), keys or "-")
    console.print(table)


def _target(address: str | None, data_dir: Path | None) -> str:
    if address:
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    running = RunFile.load(resolve_data_dir(data_dir))
    if running is None:
        return "auto"
    # Ray sends its auth token only to clusters it found itself; this one our own `up` started.
    if running.ray_auth_mode and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = running.ray_auth_mode
    return running.ray_address


def status(
    address: Annotated[
        str | None,
        typer.Option(help="Ray address (env RAY_ADDRESS; default: the cluster `downcity up` recorded, else auto)"),
    ] = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Ray, the Serve app, its deployments and replica counts, and Ledger and JobManager health."""
    target = _target(address, data_dir)
    from ray.exceptions import RayError

    try:
        found = collect(target)
    except (ConnectionError, RayError) as exc:
        console.print(f"Ray is not reachable at {target}: {type(exc).__name__}: {exc}", markup=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report(found), indent=2))
    else:
        _print(found)
    if not found.healthy:
        raise typer.Exit(1)
