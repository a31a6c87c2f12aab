"""The `downcity` CLI run as a subprocess: admin commands against the session's Federation, and up/status/down."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_ADMIN_KEY, listen_port, serve_port_base
from tests.integration.conftest import ServedApp

BIN = Path(sys.executable).parent / "downcity"
UP_DEADLINE_S = 120
# `downcity up` starts a Ray cluster of its own: on a loaded 2-core machine that alone can take UP_DEADLINE_S.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(3 * UP_DEADLINE_S)]


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout)


def cells(table: str) -> list[list[str]]:
    """The rows of a printed table (header first), each as its stripped cells."""
    rows = [line.replace("┃", "│") for line in table.splitlines()]
    return [[cell.strip() for cell in row.split("│")] for row in rows if "│" in row]


def clean_env(**values: str) -> dict[str, str]:
    """This environment without any Downcity or Ray setting, plus `values`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DOWNCITY_", "RAY_ADDRESS"))}
    return base | {"COLUMNS": "250", **values}


async def run(*args: str, env: Mapping[str, str], stdin: str | None = None) -> Ran:
    process = await asyncio.create_subprocess_exec(
        str(BIN),
        *args,
        env=dict(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else b""), 60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


@pytest.fixture
def federation_env(served: ServedApp, tmp_path: Path) -> dict[str, str]:
    return clean_env(
        DOWNCITY_URL=served.url,
        DOWNCITY_ADMIN_KEY=TEST_ADMIN_KEY,
        DOWNCITY_PROFILE_FILE=str(tmp_path / "no-profile.json"),
    )


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def test_city_create_list_pause_activate(federation_env: dict[str, str]) -> None:
    city_id = unique("cli")
    created = (await run("city", "create", "CLI app", "--id", city_id, "--json", env=federation_env)).json()
    listed = await run("city", "list", env=federation_env)
    paused = (await run("city", "pause", city_id, "--json", env=federation_env)).json()
    activated = (await run("city", "activate", city_id, "--json", env=federation_env)).json()
    assert [(c["city_id"], c["name"], c["status"]) for c in created] == [(city_id, "CLI app", "active")]
    assert [row[:3] for row in cells(listed.stdout) if row[0] == city_id] == [[city_id, "CLI app", "active"]]
    assert [c["status"] for c in paused + activated] == ["paused", "active"]


async def test_an_issued_token_calls_and_revoking_the_user_refuses_it(
    served: ServedApp, federation_env: dict[str, str]
) -> None:
    city_id, user_id = unique("cli"), unique("u")
    await run("city", "create", "Token app", "--id", city_id, env=federation_env)
    credited = await run("balance", "credit", user_id, "1000", "--city", city_id, env=federation_env)
    token = await run(
        "token",
        "apply",
        "--city",
        city_id,
        "--user",
        user_id,
        "--metadata",
        '{"plan": "pro"}',
        "-q",
        env=federation_env,
    )
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    async with httpx.AsyncClient(base_url=served.url, headers=headers) as client:
        before = await client.post("/v1/ai/text", json={"model": "reverse", "prompt": "abc"})
        revoked = await run("token", "revoke", "--user", user_id, "--city", city_id, env=federation_env)
        after = await client.post("/v1/ai/text", json={"model": "reverse", "prompt": "abc"})
    assert credited.code == 0, credited.stderr
    assert (before.status_code, before.json()["parts"][0]["text"]) == (200, "cba")
    assert revoked.stdout == "revoked 1\n"
    assert (after.status_code, after.json()["error"]["type"]) == (401, "token_revoked")


async def test_token_apply_refuses_metadata_that_is_not_an_object(federation_env: dict[str, str]) -> None:
    ran = await run("token", "apply", "--city", "x", "--user", "u", "--metadata", "[1]", env=federation_env)
    assert ran.code == 2
    assert "must be a JSON object" in ran.stderr


async def test_env_set_from_stdin_list_and_remove_never_print_the_value(federation_env: dict[str, str]) -> None:
    key, secret = unique("CLI_TEST_KEY_").upper(), f"sk-cli-{uuid.uuid4().hex}"
    stored = await run("env", "set", key, stdin=secret + "\n", env=federation_env)
    table = await run("env", "list", env=federation_env)
    entries = (await run("env", "list", "--json", env=federation_env)).json()
    removed = await run("env", "remove", key, env=federation_env)
    again = await run("env", "remove", key, env=federation_env)
    preview = f"{secret[:4]}…{secret[-2:]}"
    assert stored.stdout == f"set {key} (preview {preview})\n"
    assert [row[:2] for row in cells(table.stdout) if row[0] == key] == [[key, preview]]
    assert [(e["key"], e["preview"]) for e in entries if e["key"] == key] == [(key, preview)]
    assert (removed.stdout, again.stdout) == (f"removed {key}\n", f"{key} was not set\n")
    everything = "".join(r.stdout + r.stderr for r in (stored, table, removed, again)) + json.dumps(entries)
    assert secret[4:-2] not in everything


async def test_balance_credit_replays_by_key_and_get_and_history_show_it(federation_env: dict[str, str]) -> None:
    user_id = unique("u")
    account = ("--city", "cli-web")
    first = (
        await run(
            "balance", "credit", user_id, "1500", *account, "--idempotency-key", "k1", "--json", env=federation_env
        )
    ).json()
    replay = (
        await run(
            "balance", "credit", user_id, "1500", *account, "--idempotency-key", "k1", "--json", env=federation_env
        )
    ).json()
    balance = await run("balance", "get", user_id, *account, env=federation_env)
    history = (await run("balance", "history", user_id, *account, "--json", env=federation_env)).json()
    assert replay["id"] == first["id"]
    assert balance.stdout == f"account_id: cli-web/{user_id}\nbalance: 1500\nheld: 0\navailable: 1500\n"
    assert [(e["kind"], e["amount_microcredits"], e["balance_after_microcredits"]) for e in history] == [
        ("credit", 1500, 1500)
    ]


async def test_usage_lists_records_and_totals_by_model(served: ServedApp, federation_env: dict[str, str]) -> None:
    city_id, user_id, token = await served.new_user(credit=100_000)
    async with httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {token}"}) as client:
        for prompt in ("ab", "cd"):
            assert (await client.post("/v1/ai/text", json={"model": "reverse", "prompt": prompt})).status_code == 200
    records = (await run("usage", "--user", user_id, "--since", "1h", "--json", env=federation_env)).json()
    totals = (await run("usage", "--city", city_id, "--group-by", "model", "--json", env=federation_env)).json()
    table = await run("usage", "--city", city_id, "--group-by", "model", env=federation_env)
    assert [(r["user_id"], r["model_id"], r["status"], r["charge_microcredits"]) for r in records] == [
        (user_id, "reverse", "ok", 20),
        (user_id, "reverse", "ok", 20),
    ]
    assert [(t["key"], t["requests"], t["errors"], t["charge_microcredits"]) for t in totals] == [("reverse", 2, 0, 40)]
    assert cells(table.stdout) == [
        ["model", "requests", "errors", "input_tokens", "output_tokens", "total_tokens", "microcredits"],
        ["reverse", "2", "0", "2", "2", "4", "40"],
    ]


async def test_jobs_lists_a_citys_image_jobs(served: ServedApp, federation_env: dict[str, str]) -> None:
    city_id, user_id, token = await served.new_user(credit=100_000)
    empty = await run("jobs", "--city", city_id, env=federation_env)
    async with httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {token}"}) as client:
        created = await client.post("/v1/ai/image/create", json={"prompt": "a cat [[image-fail]]"})
    job_id = created.json()["job_id"]
    listed = (await run("jobs", "--city", city_id, "--json", env=federation_env)).json()
    table = await run("jobs", "--city", city_id, "--user", user_id, env=federation_env)
    assert empty.stdout == "no jobs\n"
    assert [(j["job_id"], j["city_id"], j["user_id"], j["model_id"]) for j in listed] == [
        (job_id, city_id, user_id, "deepseek-image")
    ]
    # The status may move on (queued, running, failed) between the two listings; the job is the same one.
    assert [(row[0], row[2], row[3]) for row in cells(table.stdout)[1:]] == [(job_id, city_id, user_id)]


async def test_a_refused_request_exits_1_with_the_servers_error(federation_env: dict[str, str]) -> None:
    ran = await run("city", "pause", "no-such-city", env=federation_env)
    assert (ran.code, ran.stdout) == (1, "")
    assert ran.stderr == "error: city_not_found: city 'no-such-city' does not exist (field: city_id)\n"


async def test_a_wrong_admin_key_exits_1_unauthorized(federation_env: dict[str, str]) -> None:
    ran = await run("--admin-key", "not-the-key", "city", "list", env=federation_env)
    assert (ran.code, ran.stderr) == (1, "error: unauthorized: invalid admin credential\n")


async def test_an_unreachable_federation_exits_1_naming_the_url(federation_env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{listen_port()}"
    ran = await run("--url", url, "city", "list", env=federation_env)
    assert ran.code == 1
    assert ran.stderr.startswith("error: connection_error: ConnectError after 2 attempts")
    assert ran.stderr.endswith(f"— is a Federation serving {url}?\n")


async def test_status_reports_the_app_its_replicas_and_the_actors(served: ServedApp) -> None:
    import ray

    address = ray.get_runtime_context().gcs_address
    report = (await run("status", "--address", address, "--json", env=clean_env())).json()
    (app,) = [a for a in report["applications"] if a["name"] == "downcity"]
    assert app["status"] == "RUNNING"
    assert {d["name"]: (d["status"], d["replicas"]) for d in app["deployments"]} == {
        "ingress": ("HEALTHY", {"RUNNING": 1}),
        "provider-deepseek": ("HEALTHY", {"RUNNING": 1}),
        "provider-deepseek-images": ("HEALTHY", {"RUNNING": 1}),
        "provider-local-tools": ("HEALTHY", {"RUNNING": 1}),
    }
    assert report["ledger"] == [{"actor": "downcity-ledger-v1", "healthy": True, "detail": ""}]
    assert (report["job_manager"]["actor"], report["job_manager"]["healthy"]) == ("downcity-jobs-v1", True)
    assert report["healthy"] is True


@dataclass
class Up:
    process: asyncio.subprocess.Process
    env: dict[str, str]
    data_dir: Path
    url: str


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    data_dir, port = tmp_path / "data", listen_port()
    env = {k: v for k, v in clean_env().items() if not k.startswith("RAY_")} | {
        "DOWNCITY_DATA_DIR": str(data_dir),
        "DOWNCITY_ADMIN_KEY": TEST_ADMIN_KEY,
        "DOWNCITY_URL": f"http://127.0.0.1:{port}",
        "DOWNCITY_SERVE_PORT_BASE": str(serve_port_base(2)),
    }
    process = await asyncio.create_subprocess_exec(
        str(BIN), "up", "--port", str(port), cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + UP_DEADLINE_S
        line = b""
        while b"Downcity is serving" not in line:
            assert time.monotonic() < deadline, "downcity up did not come up"
            line = await asyncio.wait_for(process.stdout.readline(), UP_DEADLINE_S)
            assert line, "downcity up exited"
        yield Up(process, env, data_dir, f"http://127.0.0.1:{port}")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_up_status_down(up: Up) -> None:
    second = await run("up", "--port", str(listen_port()), env=up.env)
    report = (await run("status", "--json", env=up.env)).json()
    cities = await run("city", "list", "--json", env=up.env)
    stopped = await run("down", env=up.env)
    exit_code = await asyncio.wait_for(up.process.wait(), 60)
    after = await run("down", env=up.env)
    assert second.code == 1
    assert f"downcity up is already running from {up.data_dir} (pid {up.process.pid}, {up.url})" in second.stdout
    assert report["healthy"] is True
    assert [a["name"] for a in report["applications"]] == ["downcity"]
    assert cities.json() == []
    assert stopped.stdout == f"stopped downcity up (pid {up.process.pid}, {up.url})\n"
    assert exit_code == 0
    assert after.stdout == f"nothing to stop: no {up.data_dir / 'up.json'}\n"


async def test_up_demo_json_prints_one_object_once_ready_and_its_token_works(tmp_path: Path) -> None:
    port, demo_port = listen_port(), listen_port()
    env = {k: v for k, v in clean_env().items() if not k.startswith("RAY_")} | {
        "DOWNCITY_DATA_DIR": str(tmp_path / "data"),
        "DOWNCITY_SERVE_PORT_BASE": str(serve_port_base(2)),
    }
    command = ["up", "--demo", "--json", "--port", str(port), "--demo-port", str(demo_port)]
    process = await asyncio.create_subprocess_exec(
        str(BIN), *command, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        printed = json.loads(await asyncio.wait_for(process.stdout.readline(), UP_DEADLINE_S))
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            ready = await client.get("/ready")
            headers = {"Authorization": f"Bearer {printed['user_token']}"}
            balance = await client.get("/v1/balance/me", headers=headers)
        assert sorted(printed) == ["admin_key", "city_id", "url", "user_id", "user_token"]
        assert (printed["url"], printed["city_id"], printed["user_id"]) == (url, "demo", "demo-user")
        assert printed["admin_key"].startswith("dc_admin_")
        assert (ready.status_code, balance.status_code, balance.json()["balance"]) == (200, 200, 10_000_000)
    finally:
        process.terminate()
        await process.wait()
