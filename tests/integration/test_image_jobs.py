"""Async image jobs end to end: real Ray cluster, Serve app, JobManager actor, PostgreSQL, demo upstream."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import ray
from sqlalchemy import select

from actors.batch import generate_images
from actors.jobs import JOB_MANAGER_NAME, get_job_manager
from downcity.jobs.record import JobRecord, outcome_fields
from downcity.jobs.store import JobStore
from downcity.store import Database
from downcity.store.database import now_ms
from downcity.store.schema import async_jobs, ledger_entries
from downcity.types import ImageJobResult
from examples import batch_images
from tests.integration.conftest import APP_NAME, ServedApp, eventually

pytestmark = pytest.mark.ray

PRICE = 20_000
TERMINAL = ("succeeded", "failed")
# Rounds of jobs two managers fetch go on this long, on this much credit, until one job was fetched twice.
OVERLAP_DEADLINE_S = 90
OVERLAP_CREDIT = 200 * PRICE


def user_client(app: ServedApp, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=app.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


async def create(client: httpx.AsyncClient, prompt: str, **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/ai/image/create", json={"prompt": prompt, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def follow(client: httpx.AsyncClient, job_id: str, timeout_s: float = 15) -> list[dict[str, Any]]:
    """Every distinct state `image/result` shows until the job is terminal."""
    seen: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        body = (await client.post("/v1/ai/image/result", json={"job_id": job_id})).json()
        if not seen or seen[-1]["status"] != body["status"]:
            seen.append(body)
        if body["status"] in TERMINAL:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} still {seen[-1]['status']} after {timeout_s}s")


@pytest.fixture
async def db(served: ServedApp) -> AsyncIterator[Database]:
    database = Database(served.database_url, pool_size=2)
    yield database
    await database.dispose()


async def charges(db: Database, user_id: str) -> list[tuple[str, int]]:
    # The ledger keys accounts as `<city_id>/<user_id>`; test user ids are unique across cities.
    account = ledger_entries.c.user_id.endswith(f"/{user_id}")
    query = select(ledger_entries).where(account, ledger_entries.c.kind == "charge")
    async with db.connect() as conn:
        return sorted((row.idempotency_key, row.amount_microcredits) for row in (await conn.execute(query)).all())


async def stored(db: Database, job_id: str) -> JobRecord:
    record = await JobStore(db).get(job_id)
    assert record is not None
    return record


async def upstream_polls(demo_upstream: str, record: JobRecord) -> list[int]:
    async with httpx.AsyncClient() as http:
        seen = await http.get(f"{demo_upstream.removesuffix('/v1')}/_demo/jobs/{record.state['provider_job_id']}")
    times: list[int] = seen.json()["poll_times_ms"]
    return times


def app_job_manager() -> Any:
    return ray.get_actor(JOB_MANAGER_NAME, namespace="downcity")


async def kill_and_await_restart() -> None:
    """Kill the app's JobManager; Ray restarts it, and it recovers every unfinished job on its own."""
    ray.kill(app_job_manager(), no_restart=False)
    await app_job_manager().stats.remote()


@pytest.fixture
def spare_managers(served: ServedApp, tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """Extra JobManager actors on the served app and database, killed for good afterwards."""
    created: list[Any] = []

    def spawn(**settings: Any) -> Any:
        values = {"database_url": served.database_url, "data_dir": str(tmp_path), **settings}
        name = f"downcity-jobs-test-{uuid.uuid4().hex[:8]}"
        handle = get_job_manager("examples.federation:federation", values, app_name=APP_NAME, name=name)
        created.append(handle)
        return handle

    yield spawn
    for handle in created:
        ray.kill(handle)


async def test_image_job_goes_from_queued_through_running_to_succeeded_with_a_file_part(served: ServedApp) -> None:
    _, _, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        job = await create(client, "a cat [[polls:2]] [[poll-after:300]]")
        states = await follow(client, job["job_id"])
        balance = (await client.get("/v1/balance/me")).json()
    assert job == {"job_id": job["job_id"], "status": "queued", "poll_after_ms": 300}
    assert [state["status"] for state in states] == ["queued", "running", "succeeded"]
    assert states[1] == {"job_id": job["job_id"], "status": "running", "poll_after_ms": 300}
    result = states[-1]["result"]
    assert (result["role"], [(p["type"], p["mediaType"]) for p in result["parts"]]) == (
        "assistant",
        [("file", "image/png")],
    )
    assert result["parts"][0]["url"].startswith("data:image/png;base64,")
    assert balance["balance"] == 100_000 - PRICE


async def test_failing_upstream_fails_the_job_with_its_error_and_no_charge(served: ServedApp) -> None:
    _, _, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        job = await create(client, "a cat [[image-fail]] [[polls:0]] [[poll-after:50]]")
        final = (await follow(client, job["job_id"]))[-1]
        balance = (await client.get("/v1/balance/me")).json()
    assert final == {"job_id": job["job_id"], "status": "failed", "error": "content policy violation"}
    assert balance["balance"] == 100_000


async def test_polls_honour_the_providers_poll_after(served: ServedApp, db: Database, demo_upstream: str) -> None:
    _, _, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        job = await create(client, "a cat [[polls:2]] [[poll-after:400]]")
        await follow(client, job["job_id"])
    record = await stored(db, job["job_id"])
    polls = await upstream_polls(demo_upstream, record)
    gaps = [later - earlier for earlier, later in itertools.pairwise([record.created_at_ms, *polls])]
    assert len(gaps) == 3
    assert all(400 <= gap < 400 + 500 for gap in gaps), gaps


async def test_transient_upstream_errors_back_off_exponentially(
    served: ServedApp, db: Database, demo_upstream: str
) -> None:
    _, _, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        job = await create(client, "a cat [[image-flaky:2]] [[polls:0]] [[poll-after:50]]")
        final = (await follow(client, job["job_id"]))[-1]
    assert final["status"] == "succeeded"
    polls = await upstream_polls(demo_upstream, await stored(db, job["job_id"]))
    first, second = [later - earlier for earlier, later in itertools.pairwise(polls)]
    # Default backoff: 500 ms then 1000 ms ceilings, each jittered within its upper half.
    assert 250 <= first < 500 + 400, polls
    assert 500 <= second < 1000 + 400, polls


async def test_another_user_or_city_gets_404_for_a_job(served: ServedApp) -> None:
    city_id, _, token = await served.new_user(credit=100_000)
    _, _, same_city_token = await served.new_user(city_id=city_id)
    _, _, other_city_token = await served.new_user()
    async with user_client(served, token) as client:
        job = await create(client, "a cat")
    for other in (same_city_token, other_city_token):
        async with user_client(served, other) as client:
            response = await client.post("/v1/ai/image/result", json={"job_id": job["job_id"]})
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"


async def test_admin_lists_jobs_by_status_city_and_user(served: ServedApp) -> None:
    city_id, user_id, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        failing = await create(client, "a cat [[image-fail]] [[polls:0]] [[poll-after:50]]")
        # Both jobs end within the test: a job left pending would stay in the session's JobManager, held and polled.
        succeeding = await create(client, "a dog [[polls:1]] [[poll-after:50]]")
        await follow(client, failing["job_id"])
        await follow(client, succeeding["job_id"])
    listed = await served.admin.get("/v1/jobs/list", params={"city_id": city_id, "status": "failed"})
    assert listed.status_code == 200
    [item] = listed.json()["items"]
    assert (item["job_id"], item["user_id"], item["model_id"], item["error"], item["charge_microcredits"]) == (
        failing["job_id"],
        user_id,
        "deepseek-image",
        "content policy violation",
        0,
    )
    everything = await served.admin.get("/v1/jobs/list", params={"user_id": user_id})
    assert sorted((item["job_id"], item["status"]) for item in everything.json()["items"]) == sorted(
        [(failing["job_id"], "failed"), (succeeding["job_id"], "succeeded")]
    )
    bad = await served.admin.get("/v1/jobs/list", params={"status": "done"})
    assert (bad.status_code, bad.json()["error"]["field"]) == (422, "status")


async def test_a_job_pending_past_a_short_configured_timeout_fails_with_upstream_timeout(
    served: ServedApp, db: Database, demo_upstream: str, spare_managers: Callable[..., Any]
) -> None:
    city_id, user_id, _ = await served.new_user(credit=100_000)
    manager = spare_managers(image_max_pending_duration_ms=1_000)
    job = await manager.submit.remote(city_id, user_id, {"prompt": "a cat [[image-never]] [[poll-after:200]]"}, "k")
    final = await manager.wait.remote(job["job_id"], 10)
    assert final == {
        "job_id": job["job_id"],
        "status": "failed",
        "error": "upstream timeout",
        "message": "upstream timeout",
    }
    record = await stored(db, job["job_id"])
    polls = await upstream_polls(demo_upstream, record)
    assert 1 <= len(polls) <= 5
    assert max(polls) < record.created_at_ms + 1_000 <= (record.finished_at_ms or 0)


async def test_concurrent_fetches_by_two_managers_charge_each_success_once(
    served: ServedApp, db: Database, demo_upstream: str, spare_managers: Callable[..., Any]
) -> None:
    city_id, user_id, _ = await served.new_user(credit=OVERLAP_CREDIT)
    # 1 ms leases lapse during every fetch, so both managers may fetch a job while the other still is: rounds of
    # eight jobs go on until some job was fetched twice (how soon depends on the machine's load), then every
    # success must still be charged once.
    first, second = spare_managers(image_lease_ms=1), spare_managers(image_lease_ms=1)
    jobs: list[dict[str, Any]] = []
    fetches: list[int] = []
    async with asyncio.timeout(OVERLAP_DEADLINE_S):
        while sum(fetches) <= len(fetches):
            round_jobs = [
                await first.submit.remote(
                    city_id, user_id, {"prompt": f"cat {i} [[polls:0]] [[poll-after:300]]"}, f"k{i}"
                )
                for i in range(len(jobs), len(jobs) + 8)
            ]
            records = [await stored(db, job["job_id"]) for job in round_jobs]
            # A job the first manager already finished has no work left to notify about.
            pending = [r for r in records if r.next_poll_at_ms is not None]
            await asyncio.gather(*(second.notify.remote(r.job_id, r.provider_id, r.next_poll_at_ms) for r in pending))
            finals = await asyncio.gather(*(first.wait.remote(job["job_id"], 10) for job in round_jobs))
            assert [final["status"] for final in finals] == ["succeeded"] * 8
            jobs += round_jobs
            fetches += [len(await upstream_polls(demo_upstream, record)) for record in records]
    assert await charges(db, user_id) == sorted((f"image:{job['job_id']}", PRICE) for job in jobs)


async def test_a_manager_killed_after_the_providers_success_but_before_the_job_write_charges_once(
    served: ServedApp, db: Database, demo_upstream: str
) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        job = await create(client, "a cat [[polls:0]] [[poll-after:1500]]")
        record = await stored(db, job["job_id"])
        # The provider's success happens (the upstream answers it), then the manager dies unwritten.
        async with httpx.AsyncClient(headers={"Authorization": "Bearer k"}) as http:
            answered = await http.get(f"{demo_upstream}/images/jobs/{record.state['provider_job_id']}")
        assert answered.json()["status"] == "succeeded"
        await kill_and_await_restart()
        final = (await follow(client, job["job_id"]))[-1]
    # `succeeded` is visible once stored; the manager's `wait` returns once the job is billed too.
    billed = await app_job_manager().wait.remote(job["job_id"], 30)
    assert (final["status"], billed["status"]) == ("succeeded", "succeeded")
    assert await charges(db, user_id) == [(f"image:{job['job_id']}", PRICE)]
    assert (await stored(db, job["job_id"])).charge_microcredits == PRICE


async def test_a_manager_killed_after_the_job_write_but_before_billing_bills_once(
    served: ServedApp, db: Database, demo_upstream: str
) -> None:
    _, user_id, token = await served.new_user(credit=100_000)
    async with user_client(served, token) as client:
        job = await create(client, "a cat [[polls:0]] [[poll-after:60000]]")
    record = await stored(db, job["job_id"])
    image = {"role": "assistant", "parts": [{"type": "file", "mediaType": "image/png", "url": "data:,"}]}
    success = ImageJobResult(job_id="up", status="succeeded", result=image)
    written = await JobStore(db).save_terminal(replace(record, **outcome_fields(success)), now_ms())
    assert (written.status, written.charge_microcredits) == ("succeeded", None)
    await kill_and_await_restart()
    final = await app_job_manager().wait.remote(job["job_id"], 10)
    assert final["status"] == "succeeded"
    assert await charges(db, user_id) == [(f"image:{job['job_id']}", PRICE)]
    assert len(await upstream_polls(demo_upstream, record)) == 0


async def test_killing_the_manager_with_200_pending_jobs_finishes_all_and_bills_each_success_once(
    served: ServedApp, db: Database
) -> None:
    _, user_id, token = await served.new_user(credit=10_000_000)
    limit = asyncio.Semaphore(16)

    async def one(client: httpx.AsyncClient, i: int) -> str:
        fault = " [[image-fail]]" if i % 5 == 0 else ""
        async with limit:
            return str((await create(client, f"cat {i} [[polls:2]] [[poll-after:300]]{fault}"))["job_id"])

    async with user_client(served, token) as client:
        job_ids = await asyncio.gather(*(one(client, i) for i in range(200)))

    async def jobs_rows() -> list[Any]:
        async with db.connect() as conn:
            return list((await conn.execute(select(async_jobs).where(async_jobs.c.job_id.in_(job_ids)))).all())

    # The kill must land on work in flight: the last jobs created still wait for their two polls (300 ms apart).
    pending_at_kill = sum(1 for row in await jobs_rows() if row.next_poll_at_ms is not None)
    await kill_and_await_restart()
    rows = await eventually(jobs_rows, lambda rows: all(row.next_poll_at_ms is None for row in rows), timeout_s=60)
    assert pending_at_kill > 0
    by_id = {row.job_id: row for row in rows}
    statuses = [by_id[job_id].status for job_id in job_ids]
    assert statuses == ["failed" if i % 5 == 0 else "succeeded" for i in range(200)]
    assert all(by_id[job_id].next_poll_at_ms is None for job_id in job_ids)
    expected = sorted((f"image:{job_id}", PRICE) for i, job_id in enumerate(job_ids) if i % 5)
    assert await charges(db, user_id) == expected


async def test_batch_returns_items_in_input_order_with_per_item_errors_and_never_bills_twice(
    served: ServedApp, db: Database
) -> None:
    city_id, user_id, _ = await served.new_user(credit=1_000_000)
    prompts = ["a fox [[polls:1]] [[poll-after:100]]", "a bad fox [[image-fail]] [[polls:0]]", "an owl [[polls:0]]"]

    def run() -> list[Any]:
        return generate_images(prompts, city_id=city_id, user_id=user_id, batch_id="b1", progress=False, max_tasks=2)

    items = await asyncio.to_thread(run)
    again = await asyncio.to_thread(run)
    assert [(item.index, item.prompt, item.status, item.error) for item in items] == [
        (0, prompts[0], "succeeded", None),
        (1, prompts[1], "failed", "content policy violation"),
        (2, prompts[2], "succeeded", None),
    ]
    assert items[0].result is not None and items[0].result["parts"][0]["type"] == "file"
    assert [item.job_id for item in again] == [item.job_id for item in items]
    assert await charges(db, user_id) == sorted((f"image:{items[i].job_id}", PRICE) for i in (0, 2))


async def test_batch_reports_a_rejected_item_as_an_error(served: ServedApp) -> None:
    city_id, user_id, _ = await served.new_user(credit=1_000_000)
    [item] = await asyncio.to_thread(
        generate_images, ["a fox"], city_id=city_id, user_id=user_id, model="no-such-model", progress=False
    )
    assert (item.status, item.job_id, item.error) == ("error", None, "unknown_model: unknown model 'no-such-model'")


async def test_batch_example_script_generates_on_the_cluster(served: ServedApp, db: Database) -> None:
    city_id, user_id, _ = await served.new_user(credit=1_000_000)
    argv = ["--city", city_id, "--user", user_id, "a fox [[polls:0]]", "an owl [[polls:0]]"]
    assert await asyncio.to_thread(batch_images.main, argv) == 0
    assert [amount for _, amount in await charges(db, user_id)] == [PRICE, PRICE]
