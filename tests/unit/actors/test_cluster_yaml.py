"""`cluster.yaml` against Ray's own cluster config schema, and how it fits `serve_config.yaml` and the docs."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from actors.app import AppArgs

ROOT = Path(__file__).resolve().parents[3]
THROUGHPUT_MODE = "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1"


def cluster() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    return config


def validated(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before launching anything: defaults filled in, then Ray's JSON schema."""
    prepared: dict[str, Any] = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def docs_serve_config() -> dict[str, Any]:
    """serve_config.yaml with the cluster edits of docs/operators/scale-out.md applied, as an operator would."""
    text = (ROOT / "docs" / "operators" / "scale-out.md").read_text()
    [edits] = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    config: dict[str, Any] = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config.update({key: value for key, value in edits.items() if key != "applications"})
    [app_edits] = edits["applications"]
    app = config["applications"][0]
    app["args"].update(app_edits["args"])
    deployments = {deployment["name"]: deployment for deployment in app["deployments"]}
    for deployment in app_edits["deployments"]:
        deployments[deployment["name"]].update(deployment)
    return config


def test_cluster_yaml_passes_rays_cluster_config_schema() -> None:
    prepared = validated(cluster())
    assert prepared["head_node_type"] == "downcity.head"
    assert set(prepared["available_node_types"]) == {"downcity.head", "downcity.ai.provider"}


def test_a_misspelt_node_type_field_fails_the_schema() -> None:
    config = cluster()
    config["available_node_types"]["downcity.ai.provider"]["resource"] = {"provider": 1}
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        validated(config)


def test_only_provider_nodes_advertise_the_provider_resource() -> None:
    resources = {name: spec["resources"] for name, spec in cluster()["available_node_types"].items()}
    assert resources == {"downcity.head": {}, "downcity.ai.provider": {"provider": 1}}


def test_the_docs_cluster_config_places_provider_replicas_on_provider_nodes() -> None:
    config = docs_serve_config()
    ServeDeploySchema.model_validate(config)
    args = AppArgs(**config["applications"][0]["args"])
    advertised = cluster()["available_node_types"]["downcity.ai.provider"]["resources"]
    assert args.provider_resources == {"provider": 0.01}
    assert all(share <= advertised[name] for name, share in args.provider_resources.items())


def test_the_docs_cluster_config_keeps_the_ledger_job_manager_and_ingress_on_the_head() -> None:
    [app] = docs_serve_config()["applications"]
    [ingress] = [deployment for deployment in app["deployments"] if deployment["name"] == "ingress"]
    assert AppArgs(**app["args"]).control_resources == {"node:__internal_head__": 0.001}
    assert ingress["ray_actor_options"] == {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}


def test_the_docs_cluster_config_reads_the_database_url_from_the_nodes_environment() -> None:
    assert AppArgs(**docs_serve_config()["applications"][0]["args"]).database_url is None


def test_every_node_starts_ray_in_serves_throughput_mode_with_a_fixed_metrics_port() -> None:
    config = cluster()
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        [start] = [command for command in commands if "ray start" in command]
        assert THROUGHPUT_MODE in start
        assert "--metrics-export-port=8080" in start
        assert ". ~/downcity.env" in start


def test_every_node_gets_and_installs_this_repository() -> None:
    config = cluster()
    assert config["file_mounts"] == {"~/downcity": ".", "~/downcity.env": "./downcity.env"}
    assert config["setup_commands"] == ['pip install -q "$HOME/downcity"']


def test_nodes_run_the_ray_version_this_package_pins() -> None:
    pinned = re.search(r'"ray\[serve\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None and pinned.group(1) == ray.__version__
    assert cluster()["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-cpu"
