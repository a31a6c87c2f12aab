"""A whole Ray runtime restart keeps balances and holds: they live in the database, not in the actor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import DatabaseFactory

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]

# Each run is a fresh driver that starts (and ends) its own Ray cluster.
_RUN = """
import asyncio, json, sys
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, namespace="downcity", log_to_driver=False)
from actors.ledger import get_ledger

async def main(phase, url):
    ledger = get_ledger(url, name="restart-ledger")
    if phase == "first":
        await ledger.credit("restart-credit", "carol", 10_000)
        await ledger.reserve("restart-hold", "carol", 4_000)
        await ledger.settle("restart-charged", "carol", 1_500)
    balance = await ledger.balance("carol")
    return balance.model_dump()

print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
ray.shutdown()
"""


def _run(phase: str, database_url: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE")} | {
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="dcrs-", dir="/tmp"),
    }
    done = subprocess.run(
        [sys.executable, "-c", _RUN, phase, database_url], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def test_balances_and_holds_survive_a_restart_of_the_whole_ray_runtime(
    database_factory: DatabaseFactory, backend: str
) -> None:
    database_url = await database_factory.url(backend)
    before = _run("first", database_url)
    after = _run("second", database_url)
    expected = {"user_id": "carol", "balance": 8_500, "held": 4_000, "available": 4_500}
    assert before == expected
    assert after == expected
