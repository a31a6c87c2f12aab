"""Creating an image job: model, hooks, the provider's `image_create` and the stored `async_jobs` row.

Shared by `POST /v1/ai/image/create` and the JobManager actor's `submit` (batch generation). Creating a job
holds the model's price; the JobManager bills its first success from that hold.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

from downcity.ai.context import CityInfo, Context, UserInfo
from downcity.ai.federation import Federation
from downcity.ai.hooks import run_before
from downcity.ai.resilience import Failure
from downcity.calls.admission import admit
from downcity.calls.replays import ClaimScope, ClaimStore, Replay, request_hash
from downcity.calls.resolution import error_fallback, resolve_model
from downcity.errors import DowncityHTTPError, conflict
from downcity.gateway.actions import ActionRequest
from downcity.gateway.ports import ProviderGateway
from downcity.jobs.record import JobRecord, outcome_fields
from downcity.jobs.store import JobStore
from downcity.ledger.types import LedgerPort
from downcity.store.database import now_ms
from downcity.store.values import check_json
from downcity.types import TERMINAL_JOB_STATUSES, ImageJobResult

logger = logging.getLogger(__name__)

# An image create holds its key only while it calls the provider's `image_create`.
CLAIM_LEASE_MS = 120_000


def image_hold_key(job_id: str) -> str:
    """The ledger key of a job's hold and of its charge."""
    return f"image:{job_id}"


def new_job_id() -> str:
    """A fresh job id."""
    return f"job_{uuid.uuid4().hex}"


def job_key(city_id: str, user_id: str, client_key: str) -> str:
    """The stored idempotency key of a create: the client's key scoped to its owner, at a fixed length."""
    digest = hashlib.sha256(f"{city_id}\0{user_id}\0{client_key}".encode()).hexdigest()
    return f"image:{digest}"


async def submit_image_job(
    federation: Federation,
    gateway: ProviderGateway,
    ledger: LedgerPort,
    store: JobStore,
    *,
    user: UserInfo,
    city: CityInfo,
    body: dict[str, Any],
    client_key: str | None = None,
    default_poll_ms: int = 1_000,
    claim_lease_ms: int = CLAIM_LEASE_MS,
) -> JobRecord:
    """Claim the key, resolve the model, run `before` hooks, hold the model's price, call `image_create`, store.

    A billable model's hold (key `image:<job_id>`) is reserved before the upstream is called and stays until the
    JobManager bills the first success (the charge consumes it) or the job fails (it is released). With
    `client_key`, a repeat of the same body returns the job the first call stored without calling the provider
    again, a concurrent repeat gets 409 `idempotency_in_flight`, and another body under that key gets 409.
    """
    digest = request_hash(body)
    key = job_key(city.city_id, user.user_id, client_key) if client_key else None
    claims = ClaimStore(store.db)
    job_id = new_job_id()
    if client_key is not None:
        scope = ClaimScope(city.city_id, user.user_id, "image", client_key, digest)
        replay = await claims.claim(scope, job_id, claim_lease_ms)
        if replay is not None:
            return await _stored_job(store, replay)
    try:
        record = await _create(
            federation, gateway, ledger, store, user, city, body, job_id, key, default_poll_ms, digest
        )
    except BaseException:
        if client_key is not None:
            await claims.abandon(scope.key_hash, job_id)
        raise
    if client_key is not None:
        await claims.complete(scope.key_hash, job_id, 200, {"job_id": record.job_id})
    return record


async def _stored_job(store: JobStore, replay: Replay) -> JobRecord:
    job = await store.get(str(replay.body["job_id"]))
    if job is None:
        raise RuntimeError(f"the replayed image job {replay.body['job_id']!r} is not stored")
    return job


async def _create(
    federation: Federation,
    gateway: ProviderGateway,
    ledger: LedgerPort,
    store: JobStore,
    user: UserInfo,
    city: CityInfo,
    body: dict[str, Any],
    job_id: str,
    key: str | None,
    default_poll_ms: int,
    digest: str,
) -> JobRecord:
    model = resolve_model(federation, "image", body.get("model"))
    ctx = Context(input=dict(body), user=user, city=city, model=model, pathway="image", request_id=job_id)
    await run_before(ctx, federation.hook_chain(model))
    _check_storable("input", ctx.input)
    hold_key = image_hold_key(job_id)
    account = federation.accounts.account_id(city.city_id, user.user_id)
    held = await admit(ledger, hold_key, account, model, ctx.input) is not None
    request = ActionRequest(
        request_id=job_id,
        pathway="image",
        model_id=model.id,
        input=ctx.input,
        user=user,
        city=city,
        locals=ctx.locals,
    )
    try:
        created = await _create_falling_back(federation, gateway, ctx, request, held)
        record = _new_record(ctx, created, key, default_poll_ms, digest)
        if ctx.model.id != model.id:
            record.state["fallback_from"] = model.id
        _check_storable("provider answer", {"state": record.state, "result": record.result})
    except BaseException:
        if held:
            await ledger.release(hold_key, user_id=account)
        raise
    # The claim admits one create per key; the unique key on the job is the backstop. When it catches a
    # create (a claim lost with its row), that create's job was never stored: its hold goes back now.
    stored = await store.insert(record)
    if stored.job_id != record.job_id:
        logger.warning("image job %s lost its key to job %s; its upstream job is not polled", job_id, stored.job_id)
        if held:
            await ledger.release(hold_key, user_id=account)
    return _same_request(stored, digest)


async def _create_falling_back(
    federation: Federation, gateway: ProviderGateway, ctx: Context, request: ActionRequest, held: bool
) -> ImageJobResult:
    """`image_create` on the context's model, then on its error fallbacks while they match the failure."""
    tried = {ctx.model.id}
    while True:
        try:
            return await gateway.image_create(ctx.model.provider.id, request)
        except DowncityHTTPError as error:
            current = federation.models[ctx.model.id]
            target = error_fallback(federation, current, Failure.of(error), "image", tried, held)
            if target is None:
                raise
            tried.add(target.id)
            ctx.model = target
            request.model_id = target.id


def _check_storable(what: str, value: Any) -> None:
    """What hooks wrote and what the provider answered pass the request rule: a value no database stores is a 502."""
    try:
        check_json(value)
    except DowncityHTTPError as bad:
        raise DowncityHTTPError(
            502, "provider_error", f"the image job's {what} cannot be stored: {bad.message}"
        ) from None


def _same_request(job: JobRecord, digest: str) -> JobRecord:
    # Jobs stored before request hashes were kept have none and match any body.
    if job.state.get("request_hash", digest) != digest:
        raise conflict("Idempotency-Key was already used for a different request")
    return job


def _new_record(ctx: Context, created: ImageJobResult, key: str | None, default_poll_ms: int, digest: str) -> JobRecord:
    now = now_ms()
    outcome = outcome_fields(created)
    terminal = outcome["status"] in TERMINAL_JOB_STATUSES
    poll_after = created.poll_after_ms if created.poll_after_ms is not None else default_poll_ms
    return JobRecord(
        job_id=ctx.request_id,
        idempotency_key=key,
        input=ctx.input,
        state={
            "provider_job_id": created.job_id,
            "metadata": created.metadata,
            "user_metadata": ctx.user.metadata,
            "request_hash": digest,
        },
        city_id=ctx.city.city_id,
        user_id=ctx.user.user_id,
        model_id=ctx.model.id,
        provider_id=ctx.model.provider.id,
        poll_after_ms=created.poll_after_ms,
        # A job terminal at creation is due at once, for the JobManager to bill or record it.
        next_poll_at_ms=now if terminal else now + poll_after,
        created_at_ms=now,
        updated_at_ms=now,
        finished_at_ms=now if terminal else None,
        **outcome,
    )
