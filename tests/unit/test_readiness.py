"""Readiness: every check must pass, each within its timeout; `/ready` is 503 until the seeded key is visible."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from downcity.demo.federation import DEMO_KEY_ENV, build_demo_federation
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.readiness import NotReady, Readiness, report_body
from downcity.settings import Settings


async def passes() -> None:
    return None


async def refuses() -> None:
    raise NotReady("the seed has not run")


async def hangs() -> None:
    await asyncio.sleep(60)


async def test_a_report_is_ready_when_every_check_passes() -> None:
    readiness = Readiness()
    readiness.add("ledger", passes)
    readiness.add("job_manager", passes)

    report = await readiness.report()

    assert (report.ready, report.checks) == (True, {"ledger": "ok", "job_manager": "ok"})
    assert report_body(report) == {"status": "ready", "checks": {"ledger": "ok", "job_manager": "ok"}}


async def test_a_failing_check_names_itself_and_its_reason_in_an_error_envelope() -> None:
    readiness = Readiness()
    readiness.add("ledger", passes)
    readiness.add("seed", refuses)

    report = await readiness.report()

    assert report_body(report) == {
        "status": "not_ready",
        "error": {"type": "not_ready", "message": "waiting for seed: the seed has not run"},
        "checks": {"ledger": "ok", "seed": "the seed has not run"},
    }


async def test_a_check_that_does_not_answer_in_time_is_not_ready() -> None:
    readiness = Readiness(timeout_s=0.05)
    readiness.add("provider-demo", hangs)

    report = await readiness.report()

    assert (report.ready, report.checks) == (False, {"provider-demo": "no answer within 0.05s"})


def test_a_check_name_is_registered_once() -> None:
    readiness = Readiness()
    readiness.add("ledger", passes)

    with pytest.raises(ValueError, match=r"^readiness check 'ledger' is already registered$"):
        readiness.add("ledger", passes)


async def test_ready_is_503_until_the_required_key_is_stored_while_health_is_200(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url, ready_requires_env=(DEMO_KEY_ENV,))
    runtime = await open_local_runtime(build_demo_federation(), settings)
    transport = httpx.ASGITransport(app=create_app(runtime, manage_runtime=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://downcity.test") as client:
        health = await client.get("/health")
        before = await client.get("/ready")
        await runtime.env_store.set(DEMO_KEY_ENV, "demo-key")
        await runtime.env.refresh()
        after = await client.get("/ready")
    await runtime.stop()

    assert health.status_code == 200
    assert (before.status_code, before.json()["checks"]) == (503, {"required_env": "DEMO_API_KEY not set"})
    assert (after.status_code, after.json()) == (200, {"status": "ready", "checks": {"required_env": "ok"}})
