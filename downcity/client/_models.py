"""Typed results; every model keeps unknown fields so newer servers do not break older clients."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from downcity.types import TERMINAL_JOB_STATUSES, UIMessage


def ui_message(value: Any) -> Any:
    """Drop top-level keys `UIMessage` does not know (it forbids extras) before validating."""
    if isinstance(value, dict):
        return {key: item for key, item in value.items() if key in UIMessage.model_fields}
    return value


ResultMessage = Annotated[UIMessage, BeforeValidator(ui_message)]


class _Result(BaseModel):
    model_config = ConfigDict(extra="allow")


class Model(_Result):
    """A model in the catalog, as products see it."""

    id: str
    name: str
    description: str | None = None
    pathways: list[str] = Field(default_factory=list)
    default_for: list[str] = Field(default_factory=list)
    # Microcredits per million tokens of each class, and per request, image and second; None when free.
    price: dict[str, int] | None = None
    max_output_tokens: int | None = None


class Balance(_Result):
    """An account's balance, the sum of its holds and what is left to spend, in microcredits."""

    city_id: str
    user_id: str
    account_id: str
    balance: int
    held: int
    available: int


class LedgerEntry(_Result):
    """One committed ledger row; `amount_microcredits` is positive and `kind` gives the sign."""

    id: int
    idempotency_key: str
    city_id: str
    user_id: str
    account_id: str
    kind: str
    amount_microcredits: int
    balance_after_microcredits: int
    ref: str | None = None
    note: str | None = None
    metadata: dict[str, Any] | None = None
    created_at_ms: int


class City(_Result):
    """A product boundary."""

    city_id: str
    name: str
    status: str
    created_at: str
    updated_at: str


class IssuedToken(_Result):
    """A freshly issued user token."""

    user_token: str
    city_id: str
    user_id: str
    token_id: str
    expires_at: str


class EnvEntry(_Result):
    """A stored provider key: its preview only, never the value."""

    key: str
    preview: str
    updated_at_ms: int


class UsageRecord(_Result):
    """One recorded call: `status` is ok, error, refused (before any provider work) or cancelled."""

    request_id: str
    city_id: str
    user_id: str
    pathway: str
    model_id: str | None = None
    provider_id: str | None = None
    fallback_from: str | None = None
    status: str
    http_status: int
    error_type: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    duration_ms: int = 0
    ttfb_ms: int | None = None
    charge_microcredits: int = 0
    attempts: list[dict[str, Any]] | None = None
    key_name: str | None = None
    # A priced call's exact cost per price class, in picocredits (10^-6 microcredit).
    class_picocredits: dict[str, int] = Field(default_factory=dict)
    created_at_ms: int


class UsageSummaryRow(_Result):
    """Totals of one group: `key` is the city id, user id, model id or UTC day (`YYYY-MM-DD`)."""

    key: str | None = None
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    charge_microcredits: int = 0
    # The group's exact cost per price class, in picocredits (10^-6 microcredit).
    class_picocredits: dict[str, int] = Field(default_factory=dict)


class QuotaInfo(_Result):
    """A quota: its limits and the scope they bind; `source` is `federation` (declared) or `city` (stored)."""

    id: str
    city_id: str | None = None
    user_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    per_user: bool = False
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    credits_per_day: int | None = None
    credits_per_month: int | None = None
    source: str = "city"


class QuotaUse(_Result):
    """What one budget used in its current window: `metric` is requests, tokens, credits_day or credits_month."""

    bucket: str
    metric: str
    used: int
    window_start_ms: int
    window_end_ms: int


class QuotaListing(_Result):
    """The quotas in force and, for one city, each budget's use in its current window."""

    items: list[QuotaInfo] = Field(default_factory=list)
    consumption: list[QuotaUse] = Field(default_factory=list)


class ImageJob(_Result):
    """An image job as the caller sees it."""

    job_id: str
    status: str
    result: ResultMessage | None = None
    error: str | None = None
    message: str | None = None
    poll_after_ms: int | None = None

    @property
    def done(self) -> bool:
        """True once the job succeeded or failed."""
        return self.status in TERMINAL_JOB_STATUSES


class Job(_Result):
    """An image job in the admin listing."""

    job_id: str
    status: str
    city_id: str | None = None
    user_id: str | None = None
    model_id: str | None = None
    error: str | None = None
    message: str | None = None
    charge_microcredits: int | None = None
    created_at_ms: int | None = None
    updated_at_ms: int | None = None
    finished_at_ms: int | None = None
