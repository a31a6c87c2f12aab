"""`serve run serve_config.yaml` deploys the example Federation, one deployment per provider."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import TEST_ADMIN_KEY, TEST_MASTER_KEY, eventually_sync, listen_port

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 90


@pytest.fixture(scope="module")
def serve_run(tmp_path_factory: pytest.TempPathFactory, demo_upstream: str) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("serve-run")
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = listen_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["data_dir"] = str(workdir / "data")
    # /ready then waits for a replica of every provider deployment to read the key the test stores.
    config["applications"][0]["args"]["ready_requires_env"] = ["DEEPSEEK_API_KEY"]
    config_file = workdir / "serve_config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOWNCITY_", "RAY_SERVE_"))} | {
        "RAY_USAGE_STATS_ENABLED": "0",
        "DOWNCITY_ADMIN_KEY": TEST_ADMIN_KEY,
        "DOWNCITY_MASTER_KEY": TEST_MASTER_KEY,
        "EXAMPLE_UPSTREAM_URL": demo_upstream,
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "serve"), "run", str(config_file)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, "serve run exited"
            time.sleep(0.5)
        else:
            raise AssertionError("serve run did not serve within the deadline")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_serve_run_serves_the_example_federation_end_to_end(serve_run: str) -> None:
    admin = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    with httpx.Client(base_url=serve_run, headers=admin, timeout=30) as client:
        assert (
            client.post("/v1/env/set", json={"key": "DEEPSEEK_API_KEY", "value": "sk-serve-run-1"}).status_code == 200
        )
        assert client.post("/v1/cities/create", json={"name": "Serve run", "city_id": "serve-run"}).status_code == 200
        credit = {
            "city_id": "serve-run",
            "user_id": "u1",
            "amount_microcredits": 50_000,
            "idempotency_key": "serve-run-seed",
        }
        assert client.post("/v1/balance/credit", json=credit).status_code == 200
        token = client.post("/v1/tokens/apply", json={"city_id": "serve-run", "user_id": "u1"}).json()["user_token"]
        # Ready once the provider replica holds the key just set (replicas poll the env version every second).
        assert eventually_sync(lambda: client.get("/ready"), lambda r: r.status_code == 200).json()["status"] == "ready"
        reply = client.post(
            "/v1/ai/text", json={"prompt": "from serve run"}, headers={"Authorization": f"Bearer {token}"}
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["parts"][0]["text"] == "Echo: from serve run"


def test_serve_config_names_one_deployment_per_provider() -> None:
    from examples.federation import federation

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    names = {d["name"] for d in config["applications"][0]["deployments"]}
    assert names == {"ingress"} | {f"provider-{pid}" for pid in federation.providers}
