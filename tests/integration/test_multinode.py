"""Scale-out on a Ray cluster of three nodes on this machine: a head and two provider nodes.

The scenario (tests/integration/multinode_scenario.py) needs a Ray driver of its own, so it runs once, in a
subprocess with a deadline, and reports what it saw as JSON; each test asserts one part of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_ADMIN_KEY, TEST_MASTER_KEY, DatabaseFactory

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = Path(__file__).with_name("multinode_scenario.py")
DEADLINE_S = 240
PROVIDER_NODES = {"provider-0", "provider-1"}
MIN_CALLS_PER_PHASE = 20


def _scenario_env(ray_tmp: str) -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DOWNCITY_", "RAY_")) or name == "DOWNCITY_TEST_PG_URL"
    }
    return inherited | {
        "DOWNCITY_MASTER_KEY": TEST_MASTER_KEY,
        "DOWNCITY_ADMIN_KEY": TEST_ADMIN_KEY,
        "PYTHONPATH": str(ROOT),
        # A short private dir: Ray's socket paths must stay short, and its cluster address file stays ours.
        "RAY_TMPDIR": ray_tmp,
        "RAY_USAGE_STATS_ENABLED": "0",
    }


@pytest.fixture(scope="module")
async def scenario(database_factory: DatabaseFactory) -> AsyncIterator[dict[str, Any]]:
    database_url = await database_factory.url("postgresql")
    ray_tmp = tempfile.mkdtemp(prefix="dcmn-", dir="/tmp")
    data_dir = os.path.join(ray_tmp, "data")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCENARIO),
        database_url,
        data_dir,
        env=_scenario_env(ray_tmp),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), DEADLINE_S)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        pytest.fail(f"the multi-node scenario did not finish within {DEADLINE_S} s")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = stdout.decode().strip().splitlines()
    assert process.returncode == 0 and lines, stderr.decode()[-4000:]
    yield json.loads(lines[-1])


def _provider_nodes(placement: dict[str, list[str]]) -> set[str]:
    return {node for name, nodes in placement.items() if name.startswith("provider-") for node in nodes}


async def test_provider_replicas_run_only_on_provider_nodes(scenario: dict[str, Any]) -> None:
    for stage in ("placement_deployed", "placement_scaled", "placement_recovered"):
        assert _provider_nodes(scenario[stage]) <= PROVIDER_NODES, stage


async def test_ledger_job_manager_and_ingress_stay_on_the_head(scenario: dict[str, Any]) -> None:
    placement = scenario["placement_recovered"]
    assert placement["downcity-ledger-v1"] == ["head"]
    assert placement["downcity-jobs-v1"] == ["head"]
    assert placement["ingress"] == ["head"]


async def test_editing_the_config_scales_a_provider_from_one_to_three_replicas(scenario: dict[str, Any]) -> None:
    assert len(scenario["placement_deployed"]["provider-local-tools"]) == 1
    assert len(scenario["placement_scaled"]["provider-local-tools"]) == 3


async def test_scaling_under_load_fails_no_request(scenario: dict[str, Any]) -> None:
    statuses = scenario["scale_statuses"]
    assert set(statuses) == {"200"}
    assert statuses["200"] >= MIN_CALLS_PER_PHASE


async def test_a_lost_provider_nodes_replicas_are_rescheduled_on_the_other(scenario: dict[str, Any]) -> None:
    lost = scenario["lost_node"]
    assert lost in scenario["placement_scaled"]["provider-local-tools"]
    survivor = (PROVIDER_NODES - {lost}).pop()
    assert scenario["placement_recovered"]["provider-local-tools"] == [survivor] * 3
    assert _provider_nodes(scenario["placement_recovered"]) == {survivor}


async def test_losing_a_provider_node_under_load_loses_no_accepted_charge(scenario: dict[str, Any]) -> None:
    assert sum(scenario["loss_statuses"].values()) >= MIN_CALLS_PER_PHASE
    assert scenario["accepted_charges_in_ledger"] is True
    assert scenario["unanswered_entries"] == 0
    assert scenario["charged_in_ledger"] == scenario["charged_for_accepted"]
    assert scenario["balance_matches"] is True


async def test_requests_succeed_once_serve_has_rescheduled(scenario: dict[str, Any]) -> None:
    assert scenario["after_statuses"] == {"200": 20}
