"""Creating image jobs: the stored record, holds and their release, hooks and unstorable values, error fallbacks
across models, and Idempotency-Keys (claims, and keys whose claim or stored job is missing, as for jobs created
before claims and request hashes were kept), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from downcity.ai.context import CityInfo, Context, UserInfo
from downcity.ai.federation import Federation
from downcity.ai.provider import Provider
from downcity.ai.service import AIService
from downcity.calls.replays import key_hash, request_hash
from downcity.errors import DowncityHTTPError
from downcity.gateway.ports import LocalGateway
from downcity.gateway.runner import ProviderRunner
from downcity.jobs.record import JobRecord
from downcity.jobs.store import JobStore
from downcity.jobs.submit import submit_image_job
from downcity.ledger import Ledger
from downcity.ledger.sharded import ShardedLedger
from downcity.ledger.types import LedgerPort
from downcity.store import Database
from downcity.store.schema import async_jobs, holds, idempotency_claims
from downcity.types import ImageJobResult
from examples.federation import image_hold, per_image

CITY = "city-a"
USER = "alice"
ACCOUNT = f"{CITY}/{USER}"
USER_METADATA = {"plan": "pro"}
UNAVAILABLE = {"on": "error", "match": {"status": [503]}}
PRICE = 20_000


class Studio(Provider):
    """Queues image jobs upstream; the models in `failing` answer 503 instead, `max_failures` times in all.

    Records the model, pathway and locals of every create it is asked for; `answer` overrides fields of the
    queued job it answers."""

    def __init__(self, provider_id: str) -> None:
        super().__init__(provider_id)
        self.failing: set[str] = set()
        self.max_failures = 100
        self.created: list[str] = []
        self.pathways: list[str] = []
        self.locals: list[dict[str, Any]] = []
        self.answer: dict[str, Any] = {}

    async def image_create(self, ctx: Context) -> ImageJobResult:
        failures = sum(1 for model_id in self.created if model_id in self.failing)
        self.created.append(ctx.model.id)
        self.pathways.append(ctx.pathway)
        self.locals.append(dict(ctx.locals))
        if ctx.model.id in self.failing and failures < self.max_failures:
            raise DowncityHTTPError(503, "upstream_unavailable", f"{ctx.model.id} is down")
        return ImageJobResult.model_validate({"job_id": f"up-{len(self.created)}", "status": "queued", **self.answer})

    async def image_fetch(self, ctx: Context) -> ImageJobResult:
        return ImageJobResult(job_id="up-1", status="queued")


@dataclass
class Submitting:
    federation: Federation
    gateway: LocalGateway
    ledger: LedgerPort
    store: JobStore
    studio: Studio

    async def create(
        self, prompt: str = "a cat", *, key: str | None = None, model: str = "pic", count: int | None = None
    ) -> JobRecord:
        return await submit_image_job(
            self.federation,
            self.gateway,
            self.ledger,
            self.store,
            user=UserInfo(user_id=USER, metadata=USER_METADATA),
            city=CityInfo(city_id=CITY),
            body=body(prompt, model, count),
            client_key=key,
        )

    async def claims(self) -> list[dict[str, Any]]:
        """Every stored claim's key, scope, owner, state and answer."""
        columns = [
            idempotency_claims.c[name]
            for name in ("key_hash", "city_id", "user_id", "pathway", "owner", "state", "status_code", "body")
        ]
        async with self.store.db.connect() as conn:
            return [dict(row._mapping) for row in (await conn.execute(select(*columns)))]

    async def hold_rows(self) -> list[tuple[str, str, int, str]]:
        """Every hold's key, account, amount and status."""
        query = select(holds.c.idempotency_key, holds.c.user_id, holds.c.amount_microcredits, holds.c.status)
        async with self.store.db.connect() as conn:
            return [tuple(row) for row in (await conn.execute(query))]

    async def jobs(self) -> int:
        """How many jobs are stored."""
        async with self.store.db.connect() as conn:
            return len((await conn.execute(select(async_jobs.c.job_id))).all())

    async def forget_claims(self) -> None:
        """Drop every stored claim, as for jobs created before claims were kept."""
        async with self.store.db.begin() as conn:
            await conn.execute(delete(idempotency_claims))


def body(prompt: str = "a cat", model: str = "pic", count: int | None = None) -> dict[str, Any]:
    """The create body `Submitting.create` sends."""
    return {"model": model, "prompt": prompt} | ({} if count is None else {"count": count})


@pytest.fixture
async def submitting(db: Database) -> AsyncIterator[Submitting]:
    studio = Studio("studio")
    models = [
        studio.model("pic", default="image"),
        studio.model("held", bill=per_image, hold_microcredits=PRICE),
        # Holds the price of every image the body asks for.
        studio.model("counted", bill=per_image, hold_microcredits=image_hold),
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


@pytest.fixture
async def sharded(db: Database, submitting: Submitting) -> AsyncIterator[Submitting]:
    """`submitting` over a Ledger of two shards, which releases a hold only given the account that owns it."""
    ledger = ShardedLedger([Ledger(db, shard=(index, 2)) for index in range(2)])
    await ledger.start()
    yield replace(submitting, ledger=ledger)
    await ledger.close()


def stored_key(client_key: str) -> str:
    """The idempotency key a job created under `client_key` by alice of city-a is stored with."""
    return "image:" + hashlib.sha256(f"{CITY}\0{USER}\0{client_key}".encode()).hexdigest()


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

    assert (refused.value.status, refused.value.type, refused.value.message, refused.value.field) == (
        409,
        "idempotency_conflict",
        "Idempotency-Key was already used for a different request",
        None,
    )


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


async def test_a_job_is_stored_with_its_owner_model_provider_and_input(submitting: Submitting) -> None:
    job = await submitting.create("a cat")

    stored = await submitting.store.get(job.job_id)
    assert stored == job
    assert (job.status, job.city_id, job.user_id, job.model_id, job.provider_id, job.input) == (
        "queued",
        CITY,
        USER,
        "pic",
        "studio",
        body("a cat"),
    )


async def test_a_jobs_state_holds_the_upstream_job_its_metadata_the_owners_metadata_and_the_request_hash(
    submitting: Submitting,
) -> None:
    submitting.studio.answer = {"metadata": {"region": "eu"}}

    job = await submitting.create("a cat", key="k-1")

    assert job.state == {
        "provider_job_id": "up-1",
        "metadata": {"region": "eu"},
        "user_metadata": USER_METADATA,
        "request_hash": request_hash(body("a cat")),
    }


async def test_a_job_created_under_a_key_stores_the_owners_scoped_digest_of_it(submitting: Submitting) -> None:
    job = await submitting.create(key="k-1")

    assert (await submitting.store.get(job.job_id)) == job
    assert job.idempotency_key == stored_key("k-1")


async def test_a_job_created_without_a_key_stores_none_and_no_claim(submitting: Submitting) -> None:
    job = await submitting.create()

    assert (job.idempotency_key, await submitting.claims()) == (None, [])


async def test_a_queued_job_without_a_poll_hint_is_first_polled_a_second_after_its_creation(
    submitting: Submitting,
) -> None:
    job = await submitting.create()

    assert (job.poll_after_ms, job.next_poll_at_ms, job.updated_at_ms, job.finished_at_ms) == (
        None,
        job.created_at_ms + 1_000,
        job.created_at_ms,
        None,
    )


async def test_a_queued_job_with_a_poll_hint_is_first_polled_that_long_after_its_creation(
    submitting: Submitting,
) -> None:
    submitting.studio.answer = {"poll_after_ms": 250}

    job = await submitting.create()

    assert (job.poll_after_ms, job.next_poll_at_ms, job.finished_at_ms) == (250, job.created_at_ms + 250, None)


async def test_a_job_the_provider_failed_at_creation_is_stored_finished_and_due_at_once(
    submitting: Submitting,
) -> None:
    submitting.studio.answer = {"status": "failed", "error": "content_policy", "poll_after_ms": 5_000}

    job = await submitting.create()

    assert (job.status, job.error, job.next_poll_at_ms, job.finished_at_ms) == (
        "failed",
        "content_policy",
        job.created_at_ms,
        job.created_at_ms,
    )


async def test_before_hooks_and_the_provider_both_see_the_image_pathway(submitting: Submitting) -> None:
    seen: list[str] = []
    submitting.federation.before(lambda ctx: seen.append(ctx.pathway))

    await submitting.create()

    assert (seen, submitting.studio.pathways) == (["image"], ["image"])


async def test_the_provider_sees_the_locals_a_before_hook_put(submitting: Submitting) -> None:
    def trace(ctx: Context) -> None:
        ctx.locals["trace"] = "t-1"

    submitting.federation.before(trace)

    await submitting.create()

    assert submitting.studio.locals == [{"trace": "t-1"}]


async def test_a_hold_derived_from_the_body_is_reserved_for_every_image_it_asks_for(submitting: Submitting) -> None:
    await submitting.ledger.credit("seed", ACCOUNT, 5 * PRICE)

    job = await submitting.create(model="counted", count=3)

    assert await submitting.hold_rows() == [(f"image:{job.job_id}", ACCOUNT, 3 * PRICE, "held")]


async def test_an_input_a_before_hook_makes_unstorable_is_a_502_before_any_hold_or_provider_call(
    submitting: Submitting,
) -> None:
    def poison(ctx: Context) -> None:
        ctx.input["prompt"] = "a\x00cat"

    submitting.federation.before(poison)
    await submitting.ledger.credit("seed", ACCOUNT, PRICE)

    with pytest.raises(DowncityHTTPError) as refused:
        await submitting.create(model="held")

    assert (refused.value.status, refused.value.type, refused.value.message, refused.value.field) == (
        502,
        "provider_error",
        "the image job's input cannot be stored: prompt: must not contain U+0000",
        None,
    )
    assert (submitting.studio.created, await submitting.hold_rows(), await submitting.jobs()) == ([], [], 0)


async def test_provider_metadata_that_cannot_be_stored_is_a_502_naming_it_and_gives_the_hold_back(
    submitting: Submitting,
) -> None:
    await submitting.ledger.credit("seed", ACCOUNT, PRICE)
    submitting.studio.answer = {"metadata": {"note": "a\x00b"}}

    with pytest.raises(DowncityHTTPError) as refused:
        await submitting.create(model="held")

    assert (refused.value.status, refused.value.type, refused.value.message) == (
        502,
        "provider_error",
        "the image job's provider answer cannot be stored: state.metadata.note: must not contain U+0000",
    )
    balance = await submitting.ledger.balance(ACCOUNT)
    assert (balance.balance, balance.held, await submitting.jobs()) == (PRICE, 0, 0)
    assert [status for *_, status in await submitting.hold_rows()] == ["released"]


async def test_a_provider_result_that_cannot_be_stored_is_a_502_naming_it(submitting: Submitting) -> None:
    message = {"role": "assistant", "parts": [{"type": "text", "text": "a\x00b"}]}
    submitting.studio.answer = {"status": "succeeded", "result": message}

    with pytest.raises(DowncityHTTPError) as refused:
        await submitting.create()

    assert (refused.value.status, refused.value.message) == (
        502,
        "the image job's provider answer cannot be stored: result.parts[0].text: must not contain U+0000",
    )
    assert await submitting.jobs() == 0


async def test_a_create_the_provider_refuses_gives_its_hold_back(submitting: Submitting) -> None:
    await submitting.ledger.credit("seed", ACCOUNT, PRICE)
    submitting.studio.failing = {"held"}

    with pytest.raises(DowncityHTTPError) as failed:
        await submitting.create(model="held")

    balance = await submitting.ledger.balance(ACCOUNT)
    assert (failed.value.status, balance.balance, balance.held, await submitting.jobs()) == (503, PRICE, 0, 0)
    assert [status for *_, status in await submitting.hold_rows()] == ["released"]


async def test_on_a_sharded_ledger_a_refused_create_releases_its_hold_on_the_owners_shard(
    sharded: Submitting,
) -> None:
    await sharded.ledger.credit("seed", ACCOUNT, PRICE)
    sharded.studio.failing = {"held"}

    with pytest.raises(DowncityHTTPError) as failed:
        await sharded.create(model="held")

    balance = await sharded.ledger.balance(ACCOUNT)
    assert (failed.value.status, failed.value.message, balance.held) == (503, "held is down", 0)


async def test_a_create_the_jobs_unique_key_turns_away_is_logged_naming_both_jobs(
    submitting: Submitting, caplog: pytest.LogCaptureFixture
) -> None:
    await submitting.ledger.credit("seed", ACCOUNT, 2 * PRICE)
    first = await submitting.create(key="k-1", model="held")
    await submitting.forget_claims()

    with caplog.at_level(logging.WARNING, logger="downcity.jobs.submit"):
        await submitting.create(key="k-1", model="held")

    [lost] = [key.removeprefix("image:") for key, *_, status in await submitting.hold_rows() if status == "released"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "downcity.jobs.submit"] == [
        ("WARNING", f"image job {lost} lost its key to job {first.job_id}; its upstream job is not polled")
    ]


async def test_on_a_sharded_ledger_a_create_the_jobs_unique_key_turns_away_releases_its_hold(
    sharded: Submitting,
) -> None:
    await sharded.ledger.credit("seed", ACCOUNT, 2 * PRICE)
    first = await sharded.create(key="k-1", model="held")
    await sharded.forget_claims()

    again = await sharded.create(key="k-1", model="held")

    balance = await sharded.ledger.balance(ACCOUNT)
    assert (again.job_id, balance.balance, balance.held) == (first.job_id, 2 * PRICE, PRICE)


async def test_a_completed_create_leaves_its_claim_done_with_the_job_id(submitting: Submitting) -> None:
    job = await submitting.create(key="k-1")

    assert await submitting.claims() == [
        {
            "key_hash": key_hash(CITY, USER, "image", "k-1"),
            "city_id": CITY,
            "user_id": USER,
            "pathway": "image",
            "owner": job.job_id,
            "state": "done",
            "status_code": 200,
            "body": {"job_id": job.job_id},
        }
    ]


async def test_a_repeat_of_a_completed_create_returns_its_job_without_calling_the_provider(
    submitting: Submitting,
) -> None:
    first = await submitting.create(key="k-1")

    again = await submitting.create(key="k-1")

    assert (again, submitting.studio.created) == (first, ["pic"])


async def test_a_failed_create_frees_its_key_so_a_retry_runs_afresh(submitting: Submitting) -> None:
    submitting.studio.failing = {"pic"}
    submitting.studio.max_failures = 1
    with pytest.raises(DowncityHTTPError) as failed:
        await submitting.create(key="k-1")
    freed = await submitting.claims()

    job = await submitting.create(key="k-1")

    assert (failed.value.status, freed) == (503, [])
    assert (job.state["provider_job_id"], submitting.studio.created) == ("up-2", ["pic", "pic"])
