"""Creating an image job: model, hooks, the provider's `image_create` and the stored `async_jobs` row.

Shared by `POST /v1/ai/image/create` and the JobManager actor's `submit` (batch generation). Creating a job
never bills: the JobManager bills its first success.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from downcity.ai.context import CityInfo, Context, UserInfo
from downcity.ai.federation import Federation
from downcity.ai.hooks import run_before
from downcity.calls.admission import require_funds
from downcity.calls.replays import request_hash
from downcity.calls.resolution import resolve_model
from downcity.errors import conflict
from downcity.gateway.actions import ActionRequest
from downcity.gateway.ports import ProviderGateway
from downcity.jobs.record import JobRecord, outcome_fields
from downcity.jobs.store import JobStore
from downcity.ledger.types import LedgerPort
from downcity.store.database import now_ms
from downcity.types import TERMINAL_JOB_STATUSES, ImageJobResult


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
) -> JobRecord:
    """Resolve the model, run `before` hooks, call `image_create` and store the job.

    A billable model needs a positive available balance. With `client_key`, a repeat of the same body returns
    the job the first call stored, without calling the provider again; another body under that key is a 409.
    """
    key = job_key(city.city_id, user.user_id, client_key) if client_key else None
    digest = request_hash(body)
    if key is not None:
        existing = await store.get_by_key(key)
        if existing is not None:
            return _same_request(existing, digest)
    model = resolve_model(federation, "image", body.get("model"))
    job_id = new_job_id()
    ctx = Context(input=dict(body), user=user, city=city, model=model, pathway="image", request_id=job_id)
    await run_before(ctx, federation.hook_chain(model))
    await require_funds(ledger, user.user_id, model)
    request = ActionRequest(
        request_id=job_id,
        pathway="image",
        model_id=model.id,
        input=ctx.input,
        user=user,
        city=city,
        locals=ctx.locals,
    )
    created = await gateway.image_create(model.provider.id, request)
    record = _new_record(ctx, created, key, default_poll_ms, digest)
    # A concurrent create with the same key may have stored its job first: the insert returns that one.
    return _same_request(await store.insert(record), digest)


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
