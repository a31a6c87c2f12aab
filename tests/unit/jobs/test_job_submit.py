"""Creating image jobs: error fallbacks across models, and Idempotency-Keys whose claim or stored job is missing
(jobs created before claims and request hashes were kept), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import delete, update

from downcity.ai.context import CityInfo, Context, UserInfo
from downcity.ai.federation import Federation
from downcity.ai.provider import Provider
from downcity.ai.service import AIService
from downcity.errors import DowncityHTTPError
from downcity.gateway.ports import LocalGateway
from downcity.gateway.runner import ProviderRunner
from downcity.jobs.record import JobRecord
from downcity.jobs.store import JobStore
from downcity.jobs.submit import submit_image_job
from downcity.ledger import Ledger
from downcity.store import Database
from downcity.store.schema import async_jobs, idempotency_claims
from downcity.types import ImageJobResult
from examples.federation import per_image

CITY = "city-a"
USER = "alice"
UNAVAILABLE = {"on": "error", "match": {"status": [503]}}
PRICE = 20_000


class Studio(Provider):
    """Queues image jobs upstream; the models in `failing` answer 503 instead, `max_failures` times in all.

    Records the model of every create it is asked for."""

    def __init__(self, provider_id: str) -> None:
        super().__init__(provider_id)
        self.failing: set[str] = set()
        self.max_failures = 100
        self.created: list[str] = []

    async def image_create(self, ctx: Context) -> ImageJobResult:
        failures = sum(1 for model_id in self.created if model_id in self.failing)
        self.created.append(ctx.model.id)
        if ctx.model.id in self.failing and failures < self.max_failures:
            raise DowncityHTTPError(503, "upstream_unavailable", f"{ctx.model.id} is down")
        return ImageJobResult(job_id=f"up-{len(self.created)}", status="queued")

    async def image_fetch(self, ctx: Context) -> ImageJobResult:
        return ImageJobResult(job_id="up-1", status="queued")


@dataclass
class Submitting:
    federation: Federation
    gateway: LocalGateway
    ledger: Ledger
    store: JobStore
    studio: Studio

    async def create(self, prompt: str = "a cat", *, key: str | None = None, model: str = "pic") -> JobRecord:
        return await submit_image_job(
            self.federation,
            self.gateway,
            self.ledger,
            self.store,
            user=UserInfo(user_id=USER),
            city=CityInfo(city_id=CITY),
            body={"model": model, "prompt": prompt},
            client_key=key,
        )

    async def forget_claims(self) -> None:
        """Drop every stored claim, as for jobs created before claims were kept."""
        async with self.store.db.begin() as conn:
            await conn.execute(delete(idempotency_claims))


@pytest.fixture
async def submitting(db: Database) -> AsyncIterator[Submitting]:
    studio = Studio("studio")
    models = [
        studio.model("pic", default="image"),
        studio.model("held", bill=per_image, hold_microcredits=PRICE),
        studio.model("first", fallback=[{**UNAVAILABLE, "model": "second"}]),
        studio.model("second"),
        # A cycle: a falls back to b, b to c, c to b again.
        studio.model("a", fallback=[{**UNAVAILABLE, "model": "b"}]),
        studio.model("b", fallback=[{**UNAVAILABLE, "model": "c"}]),
        studio.model("c", fallback=[{**UNAVAILABLE, "model": "b"}]),
    ]
    service = AIService()
    for model in models:
        service.use(model)
    federation = Federation(name="job-submit").use(service)
    gateway = LocalGateway({studio.id: ProviderRunner(studio, {model.id: model for model in models}, {})})
    ledger = Ledger(db)
    await ledger.start()
    yield Submitting(federation, gateway, ledger, JobStore(db), studio)
    await gateway.aclose()
    await ledger.close()


async def test_a_create_the_model_refuses_with_a_matching_error_runs_on_its_fallback(
    submitting: Submitting,
) -> None:
    submitting.studio.failing = {"first"}

    job = await submitting.create(model="first")

    assert (job.model_id, job.state["fallback_from"]) == ("second", "first")
    assert submitting.studio.created == ["first", "second"]


async def test_error_fallbacks_never_run_a_model_twice_in_one_create(submitting: Submitting) -> None:
    submitting.studio.failing = {"a", "b", "c"}
    # Were b tried again, its fourth create would succeed.
    submitting.studio.max_failures = 3

    with pytest.raises(DowncityHTTPError) as failed:
        await submitting.create(model="a")

    assert (failed.value.status, failed.value.message) == (503, "c is down")
    assert submitting.studio.created == ["a", "b", "c"]


async def test_a_key_whose_claim_is_gone_still_refuses_another_body_by_the_jobs_request_hash(
    submitting: Submitting,
) -> None:
    await submitting.create("a cat", key="k-1")
    await submitting.forget_claims()

    with pytest.raises(DowncityHTTPError) as refused:
        await submitting.create("a dog", key="k-1")

    assert (refused.value.status, refused.value.type) == (409, "idempotency_conflict")


async def test_a_key_of_a_job_stored_without_a_request_hash_returns_that_job_for_any_body(
    submitting: Submitting,
) -> None:
    first = await submitting.create("a cat", key="k-1")
    await submitting.forget_claims()
    async with submitting.store.db.begin() as conn:
        await conn.execute(
            update(async_jobs).where(async_jobs.c.job_id == first.job_id).values(state={"provider_job_id": "up-1"})
        )

    again = await submitting.create("a dog", key="k-1")

    assert again.job_id == first.job_id


async def test_a_replayed_create_whose_stored_job_is_gone_fails_naming_the_job(submitting: Submitting) -> None:
    first = await submitting.create(key="k-gone")
    async with submitting.store.db.begin() as conn:
        await conn.execute(delete(async_jobs).where(async_jobs.c.job_id == first.job_id))

    with pytest.raises(RuntimeError) as failed:
        await submitting.create(key="k-gone")

    assert str(failed.value) == f"the replayed image job {first.job_id!r} is not stored"


async def test_a_create_the_jobs_unique_key_turns_away_gives_its_hold_back(submitting: Submitting) -> None:
    await submitting.ledger.credit("seed", f"{CITY}/{USER}", 2 * PRICE)
    first = await submitting.create(key="k-1", model="held")
    await submitting.forget_claims()

    again = await submitting.create(key="k-1", model="held")

    balance = await submitting.ledger.balance(f"{CITY}/{USER}")
    assert (again.job_id, balance.balance, balance.held) == (first.job_id, 2 * PRICE, PRICE)
