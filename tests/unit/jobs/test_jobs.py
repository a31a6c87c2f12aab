"""The JobManager against the demo upstream's image jobs, with the real Ledger, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from downcity.ai.context import CityInfo, UserInfo
from downcity.ai.federation import Federation
from downcity.ai.service import AIService
from downcity.demo.images import IMAGE_DATA_URL
from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import ActionRequest
from downcity.gateway.ports import LocalGateway
from downcity.gateway.runner import ProviderRunner
from downcity.jobs import DueIndex, JobManager, backoff_delay_ms
from downcity.jobs.record import JobRecord, Progress, outcome_fields
from downcity.jobs.store import JobStore
from downcity.jobs.submit import submit_image_job
from downcity.ledger import Ledger
from downcity.settings import Settings
from downcity.store import Database
from downcity.store.database import now_ms
from downcity.store.schema import holds, ledger_entries, usage_records
from downcity.types import ImageJobResult
from examples.federation import DeepSeekImages, LocalTools, per_image
from tests.conftest import eventually

CITY = "city-a"
USER = "alice"
ACCOUNT = f"{CITY}/{USER}"
KEY_ENV = "IMAGES_KEY"
# Within the 5 s the tests wait for a job: fetches held this long without overlapping give up holding.
OVERLAP_DEADLINE_S = 4
FAST = Settings(
    image_poll_interval_ms=50,
    image_backoff_base_ms=100,
    image_backoff_max_ms=1_000,
    image_lease_ms=5_000,
    image_max_pending_duration_ms=10_000,
)
FILE_PART = {"type": "file", "mediaType": "image/png", "url": IMAGE_DATA_URL, "filename": None}


class FixedRandom(random.Random):
    """A generator whose every draw is `value`, so jittered delays are exact."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


class OverlappingFetches(LocalGateway):
    """The local gateway, holding every `image_fetch` until `overlap` fetches are in flight at once (or a deadline
    passes, and the test's count of the peak says they never were), so fetches of two managers overlap."""

    def __init__(self, runners: dict[str, ProviderRunner], overlap: int) -> None:
        super().__init__(runners)
        self.overlap = overlap
        self.active = 0
        self.peak = 0
        self._together = asyncio.Event()

    async def image_fetch(self, provider_id: str, req: ActionRequest) -> ImageJobResult:
        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.active >= self.overlap:
            self._together.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._together.wait(), OVERLAP_DEADLINE_S)
            return await super().image_fetch(provider_id, req)
        finally:
            self.active -= 1


@dataclass
class Jobs:
    """Everything a JobManager needs, over one test database and the session's demo upstream."""

    db: Database
    federation: Federation
    gateway: LocalGateway
    ledger: Ledger
    store: JobStore
    upstream_root: str
    managers: list[JobManager] = field(default_factory=list)

    async def manager(self, settings: Settings = FAST, **options: Any) -> JobManager:
        gateway = options.pop("gateway", self.gateway)
        manager = JobManager(self.federation, self.store, gateway, self.ledger, settings, **options)
        self.managers.append(manager)
        await manager.start()
        return manager

    async def create(self, prompt: str, *, user_id: str = USER, key: str | None = None) -> JobRecord:
        return await submit_image_job(
            self.federation,
            self.gateway,
            self.ledger,
            self.store,
            user=UserInfo(user_id=user_id, metadata={"plan": "pro"}),
            city=CityInfo(city_id=CITY),
            body={"prompt": prompt},
            client_key=key,
            default_poll_ms=50,
        )

    async def polls(self, record: JobRecord) -> list[int]:
        async with httpx.AsyncClient() as http:
            seen = await http.get(f"{self.upstream_root}/_demo/jobs/{record.state['provider_job_id']}")
        times: list[int] = seen.json()["poll_times_ms"]
        return times

    async def charges(self, account: str = ACCOUNT) -> list[tuple[str, int]]:
        query = select(ledger_entries).where(ledger_entries.c.user_id == account, ledger_entries.c.kind == "charge")
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(row.idempotency_key, row.amount_microcredits) for row in rows]


@pytest.fixture(scope="session")
def federation(demo_upstream: str) -> Federation:
    images = DeepSeekImages("images", env_key=KEY_ENV, base_url=demo_upstream)
    tools = LocalTools("tools")
    service = (
        AIService()
        .use(images.model("img", default="image", bill=per_image, hold_microcredits=20_000))
        .use(tools.model("rev"))
    )
    return Federation(name="jobs-test").use(service)


@pytest.fixture
async def jobs(db: Database, federation: Federation, demo_upstream: str) -> AsyncIterator[Jobs]:
    ledger = Ledger(db)
    await ledger.start()
    await ledger.credit("seed", ACCOUNT, 1_000_000)
    runners = {
        pid: ProviderRunner(
            provider, {m.id: m for m in federation.models.values() if m.provider is provider}, {KEY_ENV: "k"}
        )
        for pid, provider in federation.providers.items()
    }
    env = Jobs(db, federation, LocalGateway(runners), ledger, JobStore(db), demo_upstream.removesuffix("/v1"))
    yield env
    for manager in env.managers:
        await manager.stop()
    await env.gateway.aclose()
    await ledger.close()


async def first_change(store: JobStore, record: JobRecord) -> str:
    """The first status the job moves to from its stored one."""
    for _ in range(500):
        current = await store.get(record.job_id)
        if current is not None and current.status != record.status:
            return current.status
        await asyncio.sleep(0.01)
    return record.status


def gaps(times: list[int]) -> list[int]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_job_runs_from_queued_through_running_to_succeeded_with_a_file_part(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[polls:2]] [[poll-after:100]]")
    assert (created.status, created.poll_after_ms) == ("queued", 100)
    manager = await jobs.manager()
    assert await first_change(jobs.store, created) == "running"
    done = await manager.wait(created.job_id, 5)
    assert done is not None
    assert (done.status, done.error, done.charge_microcredits) == ("succeeded", None, 20_000)
    assert done.result is not None and done.result["role"] == "assistant"
    assert done.result["parts"] == [FILE_PART]


async def test_success_is_charged_once_under_the_job_key_with_a_usage_row(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[polls:0]] [[poll-after:10]]")
    await (await jobs.manager()).wait(created.job_id, 5)
    assert await jobs.charges() == [(f"image:{created.job_id}", 20_000)]
    async with jobs.db.connect() as conn:
        row = (await conn.execute(select(usage_records))).one()
    assert (row.request_id, row.pathway, row.model_id, row.status, row.charge_microcredits) == (
        created.job_id,
        "image",
        "img",
        "ok",
        20_000,
    )


async def test_failing_upstream_fails_the_job_with_its_error_and_charges_nothing(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[image-fail]] [[polls:1]] [[poll-after:10]]")
    done = await (await jobs.manager()).wait(created.job_id, 5)
    assert done is not None
    assert (done.status, done.error, done.result, done.charge_microcredits) == (
        "failed",
        "content policy violation",
        None,
        0,
    )
    assert await jobs.charges() == []


async def test_job_pending_past_the_max_duration_fails_without_another_poll(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[image-never]] [[poll-after:100]]")
    manager = await jobs.manager(replace(FAST, image_max_pending_duration_ms=350))
    done = await manager.wait(created.job_id, 5)
    assert done is not None
    assert (done.status, done.error, done.message) == ("failed", "upstream timeout", "upstream timeout")
    polls = await jobs.polls(created)
    # Polls every 100 ms until the 350 ms are up (fewer on a loaded machine), none once the job failed. (When a
    # poll leaves just before the deadline, the upstream logs its arrival just after it: no timing window here.)
    assert 1 <= len(polls) <= 3
    assert done.finished_at_ms is not None and done.finished_at_ms >= created.created_at_ms + 350
    assert max(polls) <= done.finished_at_ms


async def test_polls_wait_for_the_providers_poll_after(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[polls:3]] [[poll-after:150]]")
    await (await jobs.manager()).wait(created.job_id, 5)
    polls = await jobs.polls(created)
    assert len(polls) == 4
    assert all(150 <= gap < 150 + 500 for gap in gaps([created.created_at_ms, *polls])), gaps(polls)


async def test_transient_fetch_errors_back_off_exponentially(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[image-flaky:3]] [[polls:0]] [[poll-after:10]]")
    manager = await jobs.manager(rng=FixedRandom(0.0))
    done = await manager.wait(created.job_id, 5)
    assert done is not None and done.status == "succeeded"
    observed = gaps(await jobs.polls(created))
    # With every draw 0, the waits are the lower halves of 100, 200 and 400 ms.
    assert all(low <= gap < low + 400 for gap, low in zip(observed, [50, 100, 200], strict=True)), observed


def test_backoff_doubles_from_the_base_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    low, high = FixedRandom(0.0), FixedRandom(0.999)
    assert [backoff_delay_ms(n, 100, 1_000, low) for n in range(1, 7)] == [50, 100, 200, 400, 500, 500]
    assert [backoff_delay_ms(n, 100, 1_000, high) for n in range(1, 7)] == [99, 199, 399, 799, 999, 999]


async def test_two_managers_never_poll_one_job_at_once(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[polls:1]] [[poll-after:50]]")
    first = await jobs.manager()
    second = await jobs.manager()
    done = await first.wait(created.job_id, 5)
    assert done is not None and done.status == "succeeded"
    assert len(await jobs.polls(created)) == 2
    assert second.stats()["polls"] + first.stats()["polls"] == 2
    assert await jobs.charges() == [(f"image:{created.job_id}", 20_000)]


async def test_concurrent_fetches_of_one_success_charge_once(jobs: Jobs) -> None:
    slow = OverlappingFetches(jobs.gateway.runners, overlap=2)
    created = await jobs.create("a cat [[polls:0]]")
    # A 1 ms lease lapses while the first fetch is held, so the second manager fetches the same job too.
    settings = replace(FAST, image_lease_ms=1)
    first = await jobs.manager(settings, gateway=slow)
    second = await jobs.manager(settings, gateway=slow)
    done = await first.wait(created.job_id, 5)
    await second.wait(created.job_id, 5)
    assert slow.peak == 2
    assert done is not None and (done.status, done.charge_microcredits) == ("succeeded", 20_000)
    assert await jobs.charges() == [(f"image:{created.job_id}", 20_000)]


async def test_a_success_lost_before_the_job_write_is_polled_again_and_charged_once(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[polls:0]]")
    # The provider's success happened (the upstream answered it) but the manager died before writing it.
    async with httpx.AsyncClient(headers={"Authorization": "Bearer k"}) as http:
        answered = await http.get(f"{jobs.upstream_root}/v1/images/jobs/{created.state['provider_job_id']}")
    assert answered.json()["status"] == "succeeded"
    done = await (await jobs.manager()).wait(created.job_id, 5)
    assert done is not None and (done.status, done.charge_microcredits) == ("succeeded", 20_000)
    assert await jobs.charges() == [(f"image:{created.job_id}", 20_000)]


async def test_a_success_written_but_not_billed_is_billed_once_on_recovery(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[polls:0]]")
    success = ImageJobResult(job_id="up", status="succeeded", result={"role": "assistant", "parts": [FILE_PART]})
    stored = await jobs.store.save_terminal(replace(created, **outcome_fields(success)), now_ms())
    # A crash after the charge but before the job recorded it: the replayed settle must not charge again.
    await jobs.ledger.settle(f"image:{created.job_id}", ACCOUNT, 20_000)
    assert (stored.status, stored.charge_microcredits) == ("succeeded", None)
    done = await (await jobs.manager()).wait(created.job_id, 5)
    assert done is not None and (done.charge_microcredits, done.next_poll_at_ms) == (20_000, None)
    assert await jobs.charges() == [(f"image:{created.job_id}", 20_000)]
    assert len(await jobs.polls(created)) == 0


async def test_a_restarted_manager_finishes_every_pending_job_and_bills_each_success_once(jobs: Jobs) -> None:
    prompts = [f"cat {i} [[polls:2]] [[poll-after:200]]" + (" [[image-fail]]" if i % 4 == 0 else "") for i in range(12)]
    created = [await jobs.create(prompt) for prompt in prompts]
    first = await jobs.manager(owner="jobs-restart")
    # Stopped with work in flight: a job polled upstream, and jobs still waiting for the poll that ends them.
    await eventually(lambda: jobs.polls(created[-1]), lambda times: len(times) >= 1)
    await first.stop()
    at_stop = [stored.status for stored in [await jobs.store.get(record.job_id) for record in created] if stored]
    assert len(at_stop) == 12
    assert [status for status in at_stop if status not in ("succeeded", "failed")] != []
    second = await jobs.manager(owner="jobs-restart")
    done = [await second.wait(record.job_id, 5) for record in created]
    statuses = [record.status if record else None for record in done]
    assert statuses == ["failed" if i % 4 == 0 else "succeeded" for i in range(12)]
    expected = sorted((f"image:{c.job_id}", 20_000) for i, c in enumerate(created) if i % 4)
    assert sorted(await jobs.charges()) == expected


async def test_repeated_create_with_one_key_returns_the_first_job_without_a_second_upstream_job(
    jobs: Jobs,
) -> None:
    await jobs.ledger.credit("seed-bob", f"{CITY}/bob", 1_000_000)
    first = await jobs.create("a cat", key="k-1")
    again = await jobs.create("a cat", key="k-1")
    other_user = await jobs.create("a cat", key="k-1", user_id="bob")
    assert again.job_id == first.job_id
    assert again.state["provider_job_id"] == first.state["provider_job_id"]
    assert other_user.job_id != first.job_id


async def test_a_key_reused_with_another_body_is_a_409_and_starts_no_job(jobs: Jobs) -> None:
    first = await jobs.create("a cat", key="k-1")
    with pytest.raises(DowncityHTTPError) as refused:
        await jobs.create("a dog", key="k-1")
    assert refused.value.status == 409
    assert "Idempotency-Key" in refused.value.message
    assert [job.job_id for job in await jobs.store.list(user_id=USER)] == [first.job_id]


async def test_create_refuses_a_billable_model_on_an_empty_balance(jobs: Jobs) -> None:
    with pytest.raises(DowncityHTTPError) as refused:
        await jobs.create("a cat", user_id="nobody")
    assert (refused.value.status, refused.value.type) == (402, "insufficient_balance")


async def test_create_refuses_a_model_without_the_image_capability(jobs: Jobs) -> None:
    with pytest.raises(DowncityHTTPError) as refused:
        await submit_image_job(
            jobs.federation,
            jobs.gateway,
            jobs.ledger,
            jobs.store,
            user=UserInfo(user_id=USER),
            city=CityInfo(city_id=CITY),
            body={"prompt": "x", "model": "rev"},
        )
    assert (refused.value.status, refused.value.type, refused.value.field) == (422, "unsupported_pathway", "model")


async def test_the_owner_reads_a_job_and_nobody_else_does(jobs: Jobs) -> None:
    created = await jobs.create("a cat")
    assert (await jobs.store.get_for_owner(created.job_id, CITY, USER)) == created
    assert await jobs.store.get_for_owner(created.job_id, CITY, "bob") is None
    assert await jobs.store.get_for_owner(created.job_id, "city-b", USER) is None


async def test_job_list_filters_by_status_city_and_user(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[image-fail]] [[polls:0]] [[poll-after:10]]")
    await jobs.create("a dog")
    await (await jobs.manager()).wait(created.job_id, 5)
    failed = await jobs.store.list(status="failed", city_id=CITY, user_id=USER)
    assert [(r.job_id, r.status) for r in failed] == [(created.job_id, "failed")]
    assert await jobs.store.list(user_id="bob") == []
    assert len(await jobs.store.list(city_id=CITY)) == 2


def test_due_index_pops_due_jobs_in_due_order_keeping_the_earliest_schedule() -> None:
    index = DueIndex()
    index.push("b", "p", 200)
    index.push("a", "p", 100)
    index.push("b", "p", 300)
    index.push("c", "p", 150)
    index.push("c", "p", 50)
    assert (len(index), index.next_due()) == (3, 50)
    assert index.pop_due(160) == [("c", "p"), ("a", "p")]
    assert (len(index), index.next_due()) == (1, 200)
    assert index.pop_due(199) == []


async def test_progress_of_many_polls_is_written_in_one_batch(jobs: Jobs) -> None:
    first, second = await jobs.create("a cat"), await jobs.create("a dog")
    leased = await jobs.store.acquire([first.job_id, second.job_id], "me", now_ms() + 10_000, 5_000)
    assert sorted(leased) == sorted([first.job_id, second.job_id])
    await jobs.store.save_progress(
        [
            Progress(first.job_id, "me", 111, "running", {"a": 1}, 300, 1),
            Progress(second.job_id, "me", 222, "running", {"b": 2}, None, 2),
        ]
    )
    stored = [await jobs.store.get(record.job_id) for record in (first, second)]
    assert [
        (r.status, r.next_poll_at_ms, r.state, r.poll_after_ms, r.attempts, r.lease_owner) for r in stored if r
    ] == [
        ("running", 111, {"a": 1}, 300, 1, None),
        ("running", 222, {"b": 2}, 200, 1, None),
    ]


async def _hold_expiry(jobs: Jobs, job_id: str) -> int:
    async with jobs.db.connect() as conn:
        row = (await conn.execute(select(holds).where(holds.c.idempotency_key == f"image:{job_id}"))).one()
    return int(row.expires_at_ms)


async def test_a_pending_jobs_hold_is_renewed_before_its_first_poll(jobs: Jobs) -> None:
    created = await jobs.create("a cat [[polls:0]] [[poll-after:60000]]")
    reserved = await _hold_expiry(jobs, created.job_id)
    # A 1 s hold TTL makes the manager renew every third of a second; the job's first poll is a minute away.
    await jobs.manager(replace(FAST, hold_expiry_s=1))

    renewed = await eventually(lambda: _hold_expiry(jobs, created.job_id), lambda expiry: expiry > reserved)

    assert renewed > reserved
    assert await jobs.store.get(created.job_id) is not None and len(await jobs.polls(created)) == 0


async def test_a_create_key_reused_with_another_prompt_is_a_409_naming_the_key(jobs: Jobs) -> None:
    first = await jobs.create("a cat [[polls:0]]", key="reused")

    with pytest.raises(DowncityHTTPError) as refused:
        await jobs.create("a dog [[polls:0]]", key="reused")

    assert (refused.value.status, refused.value.type, refused.value.message) == (
        409,
        "idempotency_conflict",
        "Idempotency-Key was already used for a different request",
    )
    assert (await jobs.store.get(first.job_id)) == first
