"""The Overview page's numbers: usage per hour or day and per city or model, top spenders, provider errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from downcity.ledger.usage import (
    BUCKET_MS,
    Bucket,
    SeriesBy,
    UsageBucketRow,
    UsageFilter,
    UsageSummaryRow,
    summarize_usage,
    usage_over_time,
)
from downcity.runtime import Runtime
from downcity.store.database import now_ms

Window = Literal["24h", "7d", "30d"]
WINDOW_MS: dict[Window, int] = {"24h": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000}
METRICS = (
    ("requests", "Requests"),
    ("errors", "Errors"),
    ("total_tokens", "Tokens"),
    ("charge_microcredits", "Credits (microcredits)"),
)
TOP_USERS = 10
NO_KEY = "(none)"


@dataclass
class Series:
    """One city's or model's values for every bucket, and its totals over the window."""

    key: str
    values: dict[str, list[int]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)


@dataclass
class Overview:
    """Everything the Overview page draws."""

    window: Window
    bucket: Bucket
    series_by: SeriesBy
    starts_ms: list[int]
    series: list[Series]
    totals: dict[str, int]
    top_accounts: list[dict[str, Any]]
    providers: list[UsageSummaryRow]

    def _lines(self, metric: str) -> list[dict[str, Any]]:
        return [{"key": s.key, "values": s.values[metric]} for s in self.series]

    def chart_data(self) -> dict[str, Any]:
        """What console.js hands uPlot: x in seconds, then one line per series for each metric."""
        return {
            "x": [start // 1000 for start in self.starts_ms],
            "metrics": [
                {
                    "id": metric,
                    "label": label,
                    "series": [{"key": s.key, "values": s.values[metric]} for s in self.series],
                }
                for metric, label in METRICS
            ],
        }


def bucket_series(
    rows: list[UsageBucketRow], since_ms: int, until_ms: int, bucket: Bucket
) -> tuple[list[int], list[Series]]:
    """Every bucket from `since_ms` to `until_ms` and each key's values in them, zero where nothing ran."""
    size = BUCKET_MS[bucket]
    starts = list(range(since_ms // size * size, until_ms, size))
    index = {start: position for position, start in enumerate(starts)}
    by_key: dict[str, Series] = {}
    for row in rows:
        key = row.key or NO_KEY
        series = by_key.get(key)
        if series is None:
            series = Series(key, {metric: [0] * len(starts) for metric, _ in METRICS})
            by_key[key] = series
        position = index.get(row.start_ms)
        if position is None:
            continue
        for metric, _ in METRICS:
            series.values[metric][position] += int(getattr(row, metric))
    for series in by_key.values():
        series.totals = {metric: sum(values) for metric, values in series.values.items()}
    ordered = sorted(by_key.values(), key=lambda s: (-s.totals["requests"], s.key))
    return starts, ordered


async def load_overview(runtime: Runtime, window: Window, bucket: Bucket, series_by: SeriesBy) -> Overview:
    """The window's charts and tables, read with the usage store's queries."""
    until_ms = now_ms() + 1
    since_ms = until_ms - WINDOW_MS[window]
    usage_filter = UsageFilter(since_ms=since_ms, until_ms=until_ms)
    rows = await usage_over_time(runtime.db, usage_filter, bucket, series_by)
    starts, series = bucket_series(rows, since_ms, until_ms, bucket)
    totals = {metric: sum(s.totals[metric] for s in series) for metric, _ in METRICS}
    accounts = await summarize_usage(runtime.db, usage_filter, "account", TOP_USERS)
    providers = await summarize_usage(runtime.db, usage_filter, "provider")
    return Overview(
        window=window,
        bucket=bucket,
        series_by=series_by,
        starts_ms=starts,
        series=series,
        totals=totals,
        top_accounts=[await _with_balance(runtime, row) for row in accounts],
        providers=providers,
    )


async def _with_balance(runtime: Runtime, row: UsageSummaryRow) -> dict[str, Any]:
    city_id, _, user_id = (row.key or "").partition("/")
    balance = await runtime.ledger.balance(runtime.federation.accounts.account_id(city_id, user_id))
    return {"city_id": city_id, "user_id": user_id, "row": row, "available": balance.available}
