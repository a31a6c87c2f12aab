"""`downcity up`: one command that runs the whole system on the embedded default (SQLite + local Ray)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from actors.cli.lifecycle import RunFile, is_alive
from downcity.auth import KeyRing, TokenIssuer
from downcity.cities import CityStore
from downcity.env import EnvStore
from downcity.errors import DowncityHTTPError
from downcity.secrets import MasterKey
from downcity.settings import Settings
from downcity.store import Database

console = Console(highlight=False)
DEMO_FEDERATION = "downcity.demo.federation:federation"
DEMO_CITY = "demo"
DEMO_USER = "demo-user"
DEMO_CREDIT = 10_000_000
# Replicas reload provider keys within 2 s of a change; the printed examples must work at once.
KEY_PROPAGATION_S = 2.0


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
        console.print(f"[red]the demo upstream did not start: {line!r}[/]")
        raise typer.Exit(1)
    return process


async def _seed_demo(settings: Settings) -> str:
    """Store the demo key, create the demo city and credit, and issue a user token."""
    from actors.ledger import get_ledger

    db = Database(settings.resolved_database_url)
    try:
        master = MasterKey.load(settings)
        await EnvStore(db, master).set("DEMO_API_KEY", "demo-key-not-secret")
        cities = CityStore(db)
        try:
            await cities.create("Demo city", DEMO_CITY)
        except DowncityHTTPError as error:
            if error.status != 409:
                raise
        await cities.activate(DEMO_CITY)
        ledger = get_ledger(settings.resolved_database_url, settings.ledger_shards)
        await ledger.credit("demo:initial-credit", DEMO_USER, DEMO_CREDIT, note="demo credit")
        keyring = KeyRing(db, master)
        await keyring.refresh()
        issued = await TokenIssuer(keyring, cities).apply(DEMO_CITY, DEMO_USER, {"plan": "demo"})
        await asyncio.sleep(KEY_PROPAGATION_S)
        return issued.user_token
    finally:
        await db.dispose()


def _print_examples(url: str, token: str) -> None:
    console.print(f"[bold green]Downcity demo is serving on {url}[/]  (DEMO upstream: echoes prompts)")
    console.print(f"city_id: {DEMO_CITY}   user_id: {DEMO_USER}")
    console.print(f"user_token: {token}")
    console.print("Try it:")
    console.print(
        f"curl -s {url}/v1/ai/text -H 'Authorization: Bearer {token}' "
        "-H 'Content-Type: application/json' -d '{\"prompt\": \"Hello Downcity\"}'",
        soft_wrap=True,
    )
    console.print(
        f"python -c \"from openai import OpenAI; c = OpenAI(base_url='{url}/v1/ai', api_key='{token}'); "
        "print(c.chat.completions.create(model='demo-chat', "
        "messages=[{'role': 'user', 'content': 'Hello Downcity'}]).choices[0].message.content)\"",
        soft_wrap=True,
    )
    console.print("Press Ctrl-C to stop.", style="dim")


def _refuse_if_running(data_dir: Path) -> None:
    running = RunFile.load(data_dir)
    if running is not None and is_alive(running.pid):
        console.print(f"[red]downcity up is already running from {data_dir} (pid {running.pid}, {running.url})[/]")
        console.print("stop it with: downcity down")
        raise typer.Exit(1)


def _deploy(federation: str, database_url: str | None, settings: Settings, host: str, port: int) -> None:
    from ray import serve

    from actors.app import AppArgs, build

    serve.start(http_options={"host": host, "port": port})
    args = AppArgs(federation=federation, database_url=database_url, data_dir=str(settings.data_dir))
    serve.run(build(args), name="downcity", route_prefix="/")


def up(
    federation: Annotated[
        str, typer.Option(help="import path of your Federation, 'pkg.module:attr'")
    ] = DEMO_FEDERATION,
    demo: Annotated[bool, typer.Option("--demo", help="also run the demo upstream, city and token")] = False,
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    demo_port: Annotated[int, typer.Option(help="port of the demo upstream")] = 9000,
    database_url: Annotated[str | None, typer.Option(help="database URL; default SQLite in ./.downcity")] = None,
) -> None:
    """Start local Ray, deploy the app and serve until interrupted (or until `downcity down`)."""
    if database_url:
        os.environ["DOWNCITY_DATABASE_URL"] = database_url
    settings = Settings.from_env()
    _refuse_if_running(settings.data_dir)
    demo_process = None
    if demo:
        demo_process = _start_demo_upstream(demo_port)
        os.environ["DOWNCITY_DEMO_UPSTREAM_URL"] = f"http://127.0.0.1:{demo_port}/v1"
    stop = threading.Event()
    # Imported here rather than at the top so that every other `downcity` command starts without loading Ray.
    import ray

    url = f"http://{host}:{port}"
    try:
        ray.init(address="local", include_dashboard=False, namespace="downcity", log_to_driver=False)
        # After ray.init, which installs its own SIGTERM handler: `downcity down` must reach the finally below.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        address = ray.get_runtime_context().gcs_address
        RunFile(os.getpid(), url, address, os.environ.get("RAY_AUTH_MODE")).save(settings.data_dir)
        _deploy(federation, database_url, settings, host, port)
        admin_file = Path(settings.data_dir) / "admin.key"
        if admin_file.exists():
            console.print(f"admin key (shown once): {admin_file.read_text().strip()}")
            admin_file.unlink()
        if demo:
            _print_examples(url, asyncio.run(_seed_demo(settings)))
        else:
            console.print(f"[bold green]Downcity is serving {federation} on {url}[/]")
        sys.stdout.flush()
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if demo_process is not None:
            demo_process.terminate()
        ray.shutdown()
        RunFile.remove(settings.data_dir)
