"""`downcity up`: one command that runs the whole system on the embedded default (SQLite + local Ray)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from actors.cli.banner import DEMO_CITY, DEMO_USER, DemoSeed, Serving, banner
from actors.cli.lifecycle import RunFile, is_alive
from downcity.ai.federation_file import FederationFileError, load_federation_file
from downcity.auth import KeyRing, TokenIssuer
from downcity.cities import CityStore
from downcity.demo.federation import DEMO_KEY_ENV, DEMO_UPSTREAM_ENV, build_demo_federation
from downcity.env import EnvStore
from downcity.errors import DowncityHTTPError
from downcity.secrets import MasterKey
from downcity.settings import Settings
from downcity.store import Database

console = Console(highlight=False, soft_wrap=True)
errors = Console(highlight=False, soft_wrap=True, stderr=True)
DEMO_FEDERATION = "downcity.demo.federation:federation"
DEMO_CREDIT = 10_000_000
DEMO_KEY = "demo-key-not-secret"
READY_DEADLINE_S = 120.0
READY_POLL_S = 0.2


class NotReadyInTime(Exception):
    """`/ready` did not answer 200 before the deadline; the message is its last answer."""


def _start_demo_upstream(port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "downcity.demo", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening" not in line:
        process.kill()
        errors.print(f"[red]the demo upstream did not start: {line!r}[/]")
        raise typer.Exit(1)
    return process


async def _seed_demo(settings: Settings) -> str:
    """Create the demo city and credit, issue a user token, and store the demo key last.

    The deployment's readiness waits for the key, so `/ready` answering 200 means the whole seed is done.
    """
    from actors.ledger import get_ledger

    db = Database(settings.resolved_database_url)
    try:
        master = MasterKey.load(settings)
        cities = CityStore(db)
        try:
            await cities.create("Demo city", DEMO_CITY)
        except DowncityHTTPError as error:
            if error.status != 409:
                raise
        await cities.activate(DEMO_CITY)
        ledger = get_ledger(settings.resolved_database_url, settings.ledger_shards)
        account = build_demo_federation().accounts.account_id(DEMO_CITY, DEMO_USER)
        await ledger.credit("demo:initial-credit", account, DEMO_CREDIT, note="demo credit")
        keyring = KeyRing(db, master)
        await keyring.refresh()
        issued = await TokenIssuer(keyring, cities).apply(DEMO_CITY, DEMO_USER, {"plan": "demo"})
        await EnvStore(db, master).set(DEMO_KEY_ENV, DEMO_KEY)
        return issued.user_token
    finally:
        await db.dispose()


def wait_ready(url: str, deadline_s: float = READY_DEADLINE_S) -> None:
    """Poll `GET /ready` until it answers 200; NotReadyInTime with its last answer after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(f"{url}/ready")
            except httpx.HTTPError as error:
                last = type(error).__name__
            else:
                if response.status_code == 200:
                    return
                last = response.text
            time.sleep(READY_POLL_S)
    raise NotReadyInTime(last)


def _refuse_if_running(data_dir: Path) -> None:
    running = RunFile.load(data_dir)
    if running is not None and is_alive(running.pid):
        console.print(f"[red]downcity up is already running from {data_dir} (pid {running.pid}, {running.url})[/]")
        console.print("stop it with: downcity down")
        raise typer.Exit(1)


def _target(federation: str, config: Path | None, demo: bool) -> str:
    """The federation to deploy: the YAML file of --config (checked before Ray starts), else --federation."""
    if config is None:
        return federation
    if demo:
        errors.print("--config and --demo cannot be combined: --demo serves its own federation")
        raise typer.Exit(2)
    try:
        load_federation_file(config)
    except FederationFileError as refused:
        errors.print(str(refused), markup=False)
        raise typer.Exit(2) from None
    return str(config)


def _deploy(args: Mapping[str, object], host: str, port: int) -> None:
    from ray import serve

    from actors.app import AppArgs, build

    serve.start(http_options={"host": host, "port": port})
    serve.run(build(AppArgs.model_validate(args)), name="downcity", route_prefix="/")


def _take_admin_key(settings: Settings) -> str | None:
    admin_file = Path(settings.data_dir) / "admin.key"
    if not admin_file.exists():
        return None
    key = admin_file.read_text().strip()
    admin_file.unlink()
    return key


def up(
    federation: Annotated[
        str, typer.Option(help="import path of your Federation, 'pkg.module:attr'")
    ] = DEMO_FEDERATION,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="a federation YAML file instead of --federation", exists=True, dir_okay=False),
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="also run the demo upstream, city and token")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object once ready, for scripts")] = False,
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    demo_port: Annotated[int, typer.Option(help="port of the demo upstream")] = 9000,
    database_url: Annotated[str | None, typer.Option(help="database URL; default SQLite in ./.downcity")] = None,
) -> None:
    """Start local Ray, deploy the app, print the banner once `/ready` says so, serve until interrupted."""
    target = _target(federation, config, demo)
    if database_url:
        os.environ["DOWNCITY_DATABASE_URL"] = database_url
    settings = Settings.from_env()
    _refuse_if_running(settings.data_dir)
    demo_process = None
    if demo:
        demo_process = _start_demo_upstream(demo_port)
        os.environ[DEMO_UPSTREAM_ENV] = f"http://127.0.0.1:{demo_port}/v1"
    stop = threading.Event()
    # Imported here rather than at the top so that every other `downcity` command starts without loading Ray.
    import ray

    url = f"http://{host}:{port}"
    args = {
        "federation": target,
        "database_url": database_url,
        "data_dir": str(settings.data_dir),
        "ready_requires_env": [DEMO_KEY_ENV] if demo else [],
    }
    try:
        ray.init(address="local", include_dashboard=False, namespace="downcity", log_to_driver=False)
        # After ray.init, which installs its own SIGTERM handler: `downcity down` must reach the finally below.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        address = ray.get_runtime_context().gcs_address
        auth_mode = os.environ.get("RAY_AUTH_MODE")
        RunFile(os.getpid(), url, address, auth_mode).save(settings.data_dir)
        _deploy(args, host, port)
        seed = DemoSeed(asyncio.run(_seed_demo(settings)), address, auth_mode) if demo else None
        wait_ready(url)
        serving = Serving(url, target, admin_key=_take_admin_key(settings), demo=seed)
        print(serving.to_json() if as_json else banner(serving), flush=True)
        stop.wait()
    except NotReadyInTime as late:
        errors.print(f"downcity up: {url}/ready did not answer 200 within {READY_DEADLINE_S:g}s: {late}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
    finally:
        if demo_process is not None:
            demo_process.terminate()
        ray.shutdown()
        RunFile.remove(settings.data_dir)
