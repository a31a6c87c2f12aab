"""Placement knobs of `serve_config.yaml`'s args, and the Ray options they become."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from actors.app import AppArgs
from actors.placement import actor_options

FEDERATION = "examples.federation:federation"


def test_by_default_providers_go_anywhere_and_control_actors_to_the_head() -> None:
    args = AppArgs(federation=FEDERATION)
    assert args.provider_resources == {}
    assert args.control_resources == {"node:__internal_head__": 0.001}


def test_without_resources_an_actor_requests_no_custom_resource() -> None:
    assert actor_options({}) == {"num_cpus": 0}


def test_provider_resources_become_the_replicas_ray_actor_options() -> None:
    assert actor_options({"provider": 0.01}) == {"num_cpus": 0, "resources": {"provider": 0.01}}


@pytest.mark.parametrize(
    ("field", "resources", "message"),
    [
        ("provider_resources", {"provider": 0}, "the share of 'provider' must be positive"),
        ("control_resources", {"control": -1}, "the share of 'control' must be positive"),
        ("provider_resources", {" ": 0.01}, "resource names must not be empty"),
        ("control_resources", {"CPU": 1}, "CPU is not a custom resource"),
    ],
)
def test_bad_placement_is_refused_naming_the_field(field: str, resources: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AppArgs.model_validate({"federation": FEDERATION, field: resources})
    [error] = caught.value.errors()
    assert error["loc"] == (field,)
    assert f"{field}: {message}" in error["msg"]
