"""`downcity up` before Ray starts: bad flags and bad federation files are refused at once; what it prints."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from actors.cli.banner import DemoSeed, Serving, banner
from actors.cli.up import up

TOKEN = "eyJ" + "x" * 300


def invoke(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command()(up)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_bad_federation_file_is_refused_naming_line_and_field_before_ray_starts(tmp_path: Path) -> None:
    file = tmp_path / "federation.yaml"
    file.write_text("name: x\nproviders: []\nmodels: []\n")

    code, out, err = invoke("--config", str(file))

    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{file}:2: providers: List should have at least 1 item after validation, not 0",
        f"{file}:3: models: List should have at least 1 item after validation, not 0",
    ]


def test_config_and_demo_are_refused_together(tmp_path: Path) -> None:
    file = tmp_path / "federation.yaml"
    file.write_text("name: x\n")

    code, _, err = invoke("--config", str(file), "--demo")

    assert (code, err) == (2, "--config and --demo cannot be combined: --demo serves its own federation\n")


def test_the_demo_json_is_one_object_with_the_token_and_the_generated_admin_key() -> None:
    serving = Serving("http://127.0.0.1:8000", "demo:federation", admin_key="dc_admin_k", demo=DemoSeed(TOKEN, "a"))

    assert json.loads(serving.to_json()) == {
        "url": "http://127.0.0.1:8000",
        "city_id": "demo",
        "user_id": "demo-user",
        "user_token": TOKEN,
        "admin_key": "dc_admin_k",
    }


def test_without_the_demo_the_json_names_the_federation_and_no_key() -> None:
    serving = Serving("http://127.0.0.1:8000", "federation.yaml")

    assert json.loads(serving.to_json()) == {"url": "http://127.0.0.1:8000", "federation": "federation.yaml"}


def test_the_banner_keeps_a_long_token_on_one_line() -> None:
    printed = banner(Serving("http://127.0.0.1:8000", "demo:federation", demo=DemoSeed(TOKEN, "a"))).splitlines()

    assert printed[:3] == [
        "Downcity demo is serving on http://127.0.0.1:8000  (DEMO upstream: echoes prompts)",
        "city_id: demo   user_id: demo-user",
        f"user_token: {TOKEN}",
    ]
    assert printed[-1] == "Press Ctrl-C to stop."


def test_the_plain_banner_names_the_federation_and_the_admin_key() -> None:
    printed = banner(Serving("http://127.0.0.1:8000", "federation.yaml", admin_key="dc_admin_k"))

    assert printed == (
        "Downcity is serving federation.yaml on http://127.0.0.1:8000\n"
        "admin_key (shown once): dc_admin_k\n"
        "Press Ctrl-C to stop."
    )
