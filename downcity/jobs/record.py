"""An image job as stored: `JobRecord`, one poll's `Progress`, and how a provider answer becomes stored fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.engine import RowMapping

from downcity.ai.context import CityInfo, UserInfo
from downcity.types import TERMINAL_JOB_STATUSES, ImageJobResult

ACTIVE_STATUSES: tuple[str, ...] = ("queued", "running")
ALL_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed")
_CONTEXT_KEYS = (
    "job_id",
    "status",
    "input",
    "state",
    "city_id",
    "user_id",
    "model_id",
    "provider_id",
    "poll_after_ms",
    "attempts",
    "created_at_ms",
    "updated_at_ms",
)
UPSTREAM_TIMEOUT = "upstream timeout"
GENERIC_FAILURE = "image generation failed"
NO_IMAGE = "the provider reported success without an image"


def outcome_fields(result: ImageJobResult) -> dict[str, Any]:
    """The stored `status`, `result`, `error` and `message` of a provider answer.

    A success without an image is stored as a failure, and a failure always carries an error.
    """
    if result.status == "succeeded" and result.result is not None:
        dumped = result.result.model_dump(mode="json", by_alias=True)
        return {"status": "succeeded", "result": dumped, "error": None, "message": result.message}
    if result.status in TERMINAL_JOB_STATUSES:
        error = result.error or (NO_IMAGE if result.status == "succeeded" else GENERIC_FAILURE)
        return {"status": "failed", "result": None, "error": error, "message": result.message}
    return {"status": result.status, "result": None, "error": None, "message": result.message}


@dataclass(frozen=True)
class JobRecord:
    """One `async_jobs` row.

    `state` holds `provider_job_id` (the id the provider returned from `image_create`), `metadata` (the
    provider's latest metadata), `user_metadata` (the owner's token metadata, for fetch and billing) and
    `request_hash` (the create body's digest, so a reused Idempotency-Key with another body is refused).
    """

    job_id: str
    status: str
    input: dict[str, Any]
    state: dict[str, Any]
    city_id: str
    user_id: str
    model_id: str
    provider_id: str
    created_at_ms: int
    updated_at_ms: int
    idempotency_key: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    message: str | None = None
    poll_after_ms: int | None = None
    attempts: int = 0
    next_poll_at_ms: int | None = None
    lease_until_ms: int | None = None
    lease_owner: str | None = None
    charge_microcredits: int | None = None
    finished_at_ms: int | None = None

    @classmethod
    def from_row(cls, row: RowMapping) -> JobRecord:
        """A record from a selected row."""
        values = dict(row)
        values["state"] = values.get("state") or {}
        return cls(**values)

    @property
    def terminal(self) -> bool:
        """Whether the job succeeded or failed."""
        return self.status in TERMINAL_JOB_STATUSES

    @property
    def finalized(self) -> bool:
        """Whether a terminal job's charge or usage row is written."""
        return self.terminal and self.next_poll_at_ms is None

    def user_info(self) -> UserInfo:
        """The owner as `ctx.user`, with the token metadata stored at creation."""
        return UserInfo(user_id=self.user_id, metadata=self.state.get("user_metadata") or {})

    def city_info(self) -> CityInfo:
        """The owner's city as `ctx.city`."""
        return CityInfo(city_id=self.city_id)

    def to_context(self) -> dict[str, Any]:
        """The plain dict a provider's `image_fetch` sees as `ctx.job`."""
        return {key: getattr(self, key) for key in _CONTEXT_KEYS}

    def to_public(self, default_poll_ms: int) -> dict[str, Any]:
        """`{job_id, status, result?, error?, message?, poll_after_ms?}` as the owner sees it.

        A terminal job reads as `running` until its charge (or release) is written: a result is never visible
        before its charge is durable.
        """
        if self.terminal and not self.finalized:
            poll_after = self.poll_after_ms if self.poll_after_ms is not None else default_poll_ms
            return {"job_id": self.job_id, "status": "running", "poll_after_ms": poll_after}
        body: dict[str, Any] = {"job_id": self.job_id, "status": self.status}
        for key in ("result", "error", "message"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if not self.terminal:
            body["poll_after_ms"] = self.poll_after_ms if self.poll_after_ms is not None else default_poll_ms
        return body

    def to_admin(self) -> dict[str, Any]:
        """What `GET /v1/jobs/list` shows: everything but the input, provider state and result."""
        values = asdict(self)
        for key in ("input", "state", "result", "lease_owner", "lease_until_ms", "idempotency_key"):
            values.pop(key)
        return values

    def usage_row(self) -> dict[str, Any]:
        """The `usage_records` row of a terminal job; its request id is the job id."""
        finished = self.finished_at_ms or self.updated_at_ms
        failed = self.status == "failed"
        timed_out = self.error == UPSTREAM_TIMEOUT
        return {
            "request_id": self.job_id,
            "idempotency_key": f"image:{self.job_id}",
            "city_id": self.city_id,
            "user_id": self.user_id,
            "pathway": "image",
            "model_id": self.model_id,
            "provider_id": self.provider_id,
            "fallback_from": self.state.get("fallback_from"),
            "status": "error" if failed else "ok",
            "http_status": (504 if timed_out else 502) if failed else 200,
            "error_type": ("upstream_timeout" if timed_out else "image_failed") if failed else None,
            "duration_ms": max(0, finished - self.created_at_ms),
            "created_at_ms": finished,
        }


@dataclass(frozen=True)
class Progress:
    """One poll of a pending job: when it is next due, and what the provider said."""

    job_id: str
    owner: str
    next_poll_at_ms: int
    status: str
    state: dict[str, Any]
    poll_after_ms: int | None
    updated_at_ms: int
