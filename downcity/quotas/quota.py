"""`Quota`: limits on requests and tokens per minute and credits per day or month, and the calls they bind.

A quota binds a call when every scope it names matches: its city (none: every city), its user, every
token-metadata value it lists (``{"plan": "starter"}``) and its model. The calls it binds share one budget per
city, or one per user with `per_user`; a budget never spans two cities, so one product's traffic never spends
another's limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

Metric = Literal["requests", "tokens", "credits_day", "credits_month"]
METRICS: tuple[Metric, ...] = ("requests", "tokens", "credits_day", "credits_month")
LIMIT_FIELDS: dict[Metric, str] = {
    "requests": "requests_per_minute",
    "tokens": "tokens_per_minute",
    "credits_day": "credits_per_day",
    "credits_month": "credits_per_month",
}
QUOTA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MINUTE_MS = 60_000
DAY_MS = 86_400_000
MetadataValue = StrictStr | StrictInt | StrictBool


class Quota(BaseModel):
    """Limits and the scope they bind; money in integer microcredits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=QUOTA_ID_PATTERN, description="names the quota within its city")
    city_id: str | None = Field(default=None, min_length=1, max_length=64, description="none: every city")
    user_id: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, description="token metadata values to match")
    model: str | None = Field(default=None, min_length=1, max_length=128)
    per_user: bool = Field(default=False, description="one budget per user instead of one per city")
    requests_per_minute: StrictInt | None = Field(default=None, ge=1)
    tokens_per_minute: StrictInt | None = Field(default=None, ge=1)
    credits_per_day: StrictInt | None = Field(default=None, ge=0)
    credits_per_month: StrictInt | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _has_a_limit(self) -> Quota:
        if all(getattr(self, name) is None for name in LIMIT_FIELDS.values()):
            raise ValueError("a quota needs at least one limit: " + ", ".join(LIMIT_FIELDS.values()))
        return self

    def limits(self) -> dict[Metric, int]:
        """The limits it sets, by metric."""
        values = {metric: getattr(self, name) for metric, name in LIMIT_FIELDS.items()}
        return {metric: value for metric, value in values.items() if value is not None}

    def binds(self, city_id: str, user_id: str, metadata: Mapping[str, Any], model_id: str) -> bool:
        """Whether a call by this user of this city, with this token metadata, to this model, is bound."""
        return (
            self.city_id in (None, city_id)
            and self.user_id in (None, user_id)
            and self.model in (None, model_id)
            and all(key in metadata and metadata[key] == value for key, value in self.metadata.items())
        )


@dataclass(frozen=True)
class Claim:
    """What one call takes from one budget in one metric; `limit` is the budget's size per window."""

    bucket: str
    metric: Metric
    amount: int
    limit: int


def bucket_of(quota: Quota, source: str, city_id: str, user_id: str) -> str:
    """The budget a call spends: per (quota, city), or per (quota, city, user) with `per_user`.

    `source` tells the Federation's declared quotas (``federation``) from a city's stored ones (``city``).
    """
    return f"{source}:{quota.id}|{city_id}|{user_id if quota.per_user else '*'}"


def window_of(metric: Metric, now_ms: int) -> tuple[int, int]:
    """The [start, end) epoch-ms window `now_ms` falls in: a minute, a UTC day or a UTC calendar month."""
    if metric in ("requests", "tokens"):
        start = now_ms - now_ms % MINUTE_MS
        return start, start + MINUTE_MS
    if metric == "credits_day":
        start = now_ms - now_ms % DAY_MS
        return start, start + DAY_MS
    moment = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    first = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    following = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return int(first.timestamp() * 1000), int(following.timestamp() * 1000)
