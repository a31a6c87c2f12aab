"""The README's `downcity up --config examples/federation.yaml`, pointed at the demo upstream, served over HTTP."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from downcity.demo.images import IMAGE_DATA_URL
from tests.conftest import TEST_ADMIN_KEY, listen_port, serve_port_base

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE = "examples/federation.yaml"
START_DEADLINE_S = 120
CREDIT = 1_000_000


@dataclass
class Served:
    printed: dict[str, Any]
    file: Path
    user: httpx.Client


def readme_command() -> list[str]:
    (block,) = [
        b for b in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S) if EXAMPLE in b
    ]
    return shlex.split(block)


@pytest.fixture(scope="module")
def served(demo_upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("yaml-federation")
    file = workdir / "federation.yaml"
    file.write_text((ROOT / EXAMPLE).read_text().replace("https://api.openai.com/v1", demo_upstream))
    assignments = [word for word in readme_command() if re.match(r"^[A-Z_]+=", word)]
    command = [word for word in readme_command() if word not in assignments]
    command = [str(BIN / "downcity"), *command[1:]]
    command[command.index(EXAMPLE)] = str(file)
    port = listen_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOWNCITY_", "RAY_"))} | {
        "DOWNCITY_SERVE_PORT_BASE": str(serve_port_base(4)),
        "DOWNCITY_DATA_DIR": str(workdir / "data"),
        "DOWNCITY_ADMIN_KEY": TEST_ADMIN_KEY,
        **dict(word.split("=", 1) for word in assignments),
    }
    with subprocess.Popen(
        [*command, "--port", str(port), "--json"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            printed = json.loads(process.stdout.readline())
            url = f"http://127.0.0.1:{port}"
            admin = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
            with httpx.Client(base_url=url, headers=admin, timeout=30) as client:
                client.post("/v1/cities/create", json={"name": "YAML app", "city_id": "yaml"}).raise_for_status()
                credit = {
                    "city_id": "yaml",
                    "user_id": "u1",
                    "amount_microcredits": CREDIT,
                    "idempotency_key": "seed-u1",
                }
                client.post("/v1/balance/credit", json=credit).raise_for_status()
                issued = client.post("/v1/tokens/apply", json={"city_id": "yaml", "user_id": "u1"})
            token = issued.json()["user_token"]
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as user:
                yield Served(printed, file, user)
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def test_up_prints_one_json_object_once_ready(served: Served) -> None:
    url = served.printed["url"]
    assert served.printed == {"url": url, "federation": str(served.file)}
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200


def test_the_models_are_the_files(served: Served) -> None:
    items = served.user.get("/v1/ai/models").json()["items"]
    assert [(m["id"], m["provider"], m["default_for"], m["media"]) for m in items] == [
        ("gpt-4o-mini", "openai", ["text", "stream", "openai"], []),
        ("gpt-4o", "openai", [], ["image/*"]),
    ]


def test_text_runs_the_default_model_at_its_token_price(served: Served) -> None:
    reply = served.user.post("/v1/ai/text", json={"prompt": "Hello YAML"}).json()
    meta = reply["metadata"]
    assert (reply["parts"][0]["text"], meta["model"]) == ("Echo: Hello YAML", "gpt-4o-mini")
    assert (meta["usage"]["input_tokens"], meta["usage"]["output_tokens"]) == (2, 3)
    assert meta["charge"]["amount_microcredits"] == 2 * 1 + 3 * 4


def test_an_image_falls_back_to_the_vision_model_at_its_price(served: Served) -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "file", "mediaType": "image/png", "url": IMAGE_DATA_URL},
    ]
    reply = served.user.post("/v1/ai/text", json={"messages": [{"role": "user", "parts": parts}]}).json()
    meta = reply["metadata"]
    usage = meta["usage"]
    assert meta["model"] == "gpt-4o"
    assert meta["charge"]["amount_microcredits"] == 3 * usage["input_tokens"] + 10 * usage["output_tokens"]


def test_chat_completions_pass_through_to_the_upstream(served: Served) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello passthrough"}]}
    reply = served.user.post("/v1/ai/chat/completions", json=body).json()
    assert reply["choices"][0]["message"]["content"] == "Echo: Hello passthrough"
