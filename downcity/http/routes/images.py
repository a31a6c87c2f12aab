"""Image job routes: `image/create` starts a job, `image/result` reads the caller's own stored job."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter

from downcity.errors import DowncityHTTPError, not_found
from downcity.http.deps import CallerDep, IdempotencyKeyDep, RuntimeDep
from downcity.http.schemas import ImageCreateRequest, ImageResultRequest
from downcity.jobs.store import JobStore
from downcity.jobs.submit import submit_image_job

router = APIRouter(prefix="/v1/ai/image")
logger = logging.getLogger(__name__)


@router.post("/create")
async def create(
    body: ImageCreateRequest, runtime: RuntimeDep, caller: CallerDep, idempotency_key: IdempotencyKeyDep
) -> dict[str, Any]:
    """Start an upstream image job and hand it to the JobManager; never bills."""
    jobs = runtime.jobs
    if jobs is None:
        raise DowncityHTTPError(503, "jobs_unavailable", "image jobs are not available on this server")
    record = await submit_image_job(
        runtime.federation,
        runtime.gateway,
        runtime.ledger,
        JobStore(runtime.db),
        user=caller.user_info(),
        city=caller.city_info(),
        body=body.model_dump(exclude_none=True),
        client_key=idempotency_key,
        default_poll_ms=runtime.settings.image_poll_interval_ms,
    )
    if record.next_poll_at_ms is not None:
        try:
            await jobs.notify(record.job_id, record.provider_id, record.next_poll_at_ms)
        except Exception as exc:
            # The job is stored: the JobManager's recovery scan finds it even without this notice.
            logger.warning("job %s: could not notify the JobManager (%s)", record.job_id, type(exc).__name__)
    public = record.to_public(runtime.settings.image_poll_interval_ms)
    return {key: public[key] for key in ("job_id", "status", "message", "poll_after_ms") if key in public}


@router.post("/result")
async def result(body: ImageResultRequest, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """The caller's stored job: `{job_id, status, result?, error?, message?, poll_after_ms?}`."""
    record = await JobStore(runtime.db).get_for_owner(body.job_id, caller.city_id, caller.user_id)
    if record is None:
        raise not_found(f"no image job {body.job_id!r}")
    return record.to_public(runtime.settings.image_poll_interval_ms)
