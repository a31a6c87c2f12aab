"""Usage queries: recorded calls filtered by city, user, model, status and time, and their totals by group."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Select, and_, case, func, literal_column, select, true

from downcity.errors import invalid
from downcity.store.database import Database
from downcity.store.schema import PRICE_CLASS_COLUMNS, usage_records

GroupBy = Literal["city", "user", "model", "day", "provider", "account"]
Bucket = Literal["hour", "day"]
SeriesBy = Literal["city", "model"]
UsageStatus = Literal["ok", "error", "refused", "cancelled"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000
# 30 days of hours for 27 series: a chart's worth, far below what would strain a query or a page.
MAX_BUCKET_ROWS = 20_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
BUCKET_MS: dict[Bucket, int] = {"hour": MS_PER_HOUR, "day": MS_PER_DAY}
# Epoch milliseconds beyond this are typos (the year 33658), not times.
MAX_EPOCH_MS = 10**15
_DURATION = re.compile(r"^(\d{1,9})([smhdw])$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": MS_PER_DAY, "w": 7 * MS_PER_DAY}
_RECORD_COLUMNS = (
    "request_id",
    "city_id",
    "user_id",
    "pathway",
    "model_id",
    "provider_id",
    "fallback_from",
    "status",
    "http_status",
    "error_type",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cache_write_tokens",
    "duration_ms",
    "ttfb_ms",
    "charge_microcredits",
    "attempts",
    "key_name",
    "created_at_ms",
)
_CLASS_COLUMNS = tuple(f"{name}_picocredits" for name in PRICE_CLASS_COLUMNS)


class UsageRecord(BaseModel):
    """One recorded call as the API shows it (its ledger and idempotency keys stay internal)."""

    request_id: str
    city_id: str
    user_id: str
    pathway: str
    model_id: str | None
    provider_id: str | None
    fallback_from: str | None
    status: str
    http_status: int
    error_type: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int
    duration_ms: int
    ttfb_ms: int | None
    charge_microcredits: int
    attempts: list[dict[str, Any]] | None = None
    key_name: str | None = None
    # A priced call's exact cost per class, in picocredits (10^-6 microcredit); empty when a bill charged it.
    class_picocredits: dict[str, int] = Field(default_factory=dict)
    created_at_ms: int


class UsageSummaryRow(BaseModel):
    """Totals of one group: `key` is the city id, user id, model id, UTC day (`YYYY-MM-DD`), provider id or
    account (`<city_id>/<user_id>`)."""

    key: str | None
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    charge_microcredits: int
    # The exact cost per price class of the group's priced calls, in picocredits (10^-6 microcredit).
    class_picocredits: dict[str, int] = Field(default_factory=dict)


def parse_time(value: str, field: str, now_ms: int) -> int:
    """Epoch ms from epoch ms digits, an ISO-8601 date or datetime (UTC when naive), or a duration ago (`24h`)."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        ms = int(text)
        if ms >= MAX_EPOCH_MS:
            raise invalid(f"{field} is too large for epoch milliseconds", field)
        return ms
    duration = _DURATION.fullmatch(text)
    if duration is not None:
        return max(0, now_ms - int(duration.group(1)) * _UNIT_MS[duration.group(2)])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        message = f"{field} must be epoch milliseconds, an ISO-8601 date or time, or a duration like 24h or 7d"
        raise invalid(message, field) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def day_of(ms: int) -> str:
    """The UTC day of an epoch-ms time, `YYYY-MM-DD`."""
    return datetime.fromtimestamp(ms // 1000, tz=UTC).date().isoformat()


@dataclass(frozen=True)
class UsageFilter:
    """Which records to read; `since` is inclusive and `until` exclusive (epoch ms)."""

    city_id: str | None = None
    user_id: str | None = None
    model: str | None = None
    status: UsageStatus | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        if self.since_ms is not None and self.until_ms is not None and self.until_ms <= self.since_ms:
            raise invalid("until must be later than since", "until")

    def where(self) -> ColumnElement[bool]:
        """The SQL condition every matching record meets."""
        columns = usage_records.c
        clauses: list[ColumnElement[bool]] = []
        if self.city_id is not None:
            clauses.append(columns.city_id == self.city_id)
        if self.user_id is not None:
            clauses.append(columns.user_id == self.user_id)
        if self.model is not None:
            clauses.append(columns.model_id == self.model)
        if self.status is not None:
            clauses.append(columns.status == self.status)
        if self.since_ms is not None:
            clauses.append(columns.created_at_ms >= self.since_ms)
        if self.until_ms is not None:
            clauses.append(columns.created_at_ms < self.until_ms)
        return and_(true(), *clauses)


def _check_offset(offset: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise invalid(f"offset must be an integer from 0 to {MAX_OFFSET}", "offset")
    return offset


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
    return limit


async def list_usage(
    db: Database, usage_filter: UsageFilter, limit: int = DEFAULT_LIMIT, offset: int = 0
) -> list[UsageRecord]:
    """The matching records, newest first, skipping the first `offset`."""
    columns = usage_records.c
    stmt = (
        select(*(columns[name] for name in (*_RECORD_COLUMNS, *_CLASS_COLUMNS)))
        .where(usage_filter.where())
        .order_by(columns.created_at_ms.desc(), columns.request_id.desc())
        .limit(_check_limit(limit))
        .offset(_check_offset(offset))
    )
    async with db.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [UsageRecord.model_validate({**row._mapping, "class_picocredits": _classes(row)}) for row in rows]


def _classes(row: Any) -> dict[str, int]:
    """The nonzero per-class costs of a row (a record, or a summary group's sums)."""
    costs = {name: int(getattr(row, f"{name}_picocredits")) for name in PRICE_CLASS_COLUMNS}
    return {name: cost for name, cost in costs.items() if cost}


def _slot(size_ms: int) -> ColumnElement[Any]:
    # A literal divisor: a bound one would differ between SELECT and GROUP BY on PostgreSQL.
    return usage_records.c.created_at_ms // literal_column(str(size_ms))


def _totals() -> tuple[ColumnElement[Any], ...]:
    columns = usage_records.c
    return (
        func.count().label("requests"),
        func.coalesce(func.sum(case((columns.status != "ok", 1), else_=0)), 0).label("errors"),
        func.coalesce(func.sum(columns.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(columns.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(columns.charge_microcredits), 0).label("charge_microcredits"),
    )


def _summary_select(group_by: GroupBy) -> Select[Any]:
    columns = usage_records.c
    keys: dict[str, ColumnElement[Any]] = {
        "city": columns.city_id,
        "user": columns.user_id,
        "model": columns.model_id,
        "day": _slot(MS_PER_DAY),
        "provider": columns.provider_id,
        "account": columns.city_id + literal_column("'/'") + columns.user_id,
    }
    key = keys[group_by].label("key")
    charge = func.coalesce(func.sum(columns.charge_microcredits), 0)
    stmt = select(
        key, *_totals(), *(func.coalesce(func.sum(columns[name]), 0).label(name) for name in _CLASS_COLUMNS)
    ).group_by(key)
    if group_by == "day":
        return stmt.order_by(key.desc())
    return stmt.order_by(charge.desc(), func.count().desc(), key.asc().nulls_last())


async def summarize_usage(
    db: Database, usage_filter: UsageFilter, group_by: GroupBy = "model", limit: int = DEFAULT_LIMIT
) -> list[UsageSummaryRow]:
    """Totals per group: newest day first, or the biggest spenders first for city, user and model."""
    if group_by not in ("city", "user", "model", "day", "provider", "account"):
        raise invalid("group_by must be one of city, user, model, day, provider, account", "group_by")
    stmt = _summary_select(group_by).where(usage_filter.where()).limit(_check_limit(limit))
    async with db.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    # PostgreSQL sums bigints as numeric, so every total is brought back to int here.
    return [
        UsageSummaryRow(
            key=day_of(int(row.key) * MS_PER_DAY) if group_by == "day" else row.key,
            requests=int(row.requests),
            errors=int(row.errors),
            input_tokens=int(row.input_tokens),
            output_tokens=int(row.output_tokens),
            total_tokens=int(row.input_tokens) + int(row.output_tokens),
            charge_microcredits=int(row.charge_microcredits),
            class_picocredits=_classes(row),
        )
        for row in rows
    ]


class UsageBucketRow(BaseModel):
    """Totals of one series (`key`: a city or model id) in one time bucket starting at `start_ms`."""

    start_ms: int
    key: str | None
    requests: int
    errors: int
    total_tokens: int
    charge_microcredits: int


async def usage_over_time(
    db: Database, usage_filter: UsageFilter, bucket: Bucket, series: SeriesBy
) -> list[UsageBucketRow]:
    """Totals per UTC hour or day and per city or model, oldest bucket first (empty buckets are absent); at most
    `MAX_BUCKET_ROWS` rows, the oldest."""
    if bucket not in BUCKET_MS:
        raise invalid("bucket must be hour or day", "bucket")
    if series not in ("city", "model"):
        raise invalid("series must be city or model", "series")
    columns = usage_records.c
    slot = _slot(BUCKET_MS[bucket]).label("slot")
    key = (columns.city_id if series == "city" else columns.model_id).label("key")
    stmt = (
        select(slot, key, *_totals())
        .where(usage_filter.where())
        .group_by(slot, key)
        .order_by(slot.asc(), key.asc().nulls_last())
        .limit(MAX_BUCKET_ROWS)
    )
    async with db.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        UsageBucketRow(
            start_ms=int(row.slot) * BUCKET_MS[bucket],
            key=row.key,
            requests=int(row.requests),
            errors=int(row.errors),
            total_tokens=int(row.input_tokens) + int(row.output_tokens),
            charge_microcredits=int(row.charge_microcredits),
        )
        for row in rows
    ]
