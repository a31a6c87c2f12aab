"""`downcity usage` and `downcity jobs`: what was called, by whom, and what it cost."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from downcity.cli.session import JsonOption, admin_client, print_json, print_table, when
from downcity.client import UsageRecord, UsageSummaryRow

TIME_HELP = "epoch ms, ISO-8601 date or time (UTC if naive), or a duration ago such as 24h or 7d"


class GroupBy(StrEnum):
    """What `usage --group-by` totals over."""

    city = "city"
    user = "user"
    model = "model"
    day = "day"


class CallStatus(StrEnum):
    """A usage record's status."""

    ok = "ok"
    error = "error"
    refused = "refused"
    cancelled = "cancelled"


class JobStatus(StrEnum):
    """An image job's status."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


CityOption = Annotated[str | None, typer.Option("--city", help="only this city")]
UserOption = Annotated[str | None, typer.Option("--user", help="only this user")]
LimitOption = Annotated[int, typer.Option(min=1, max=1000, help="at most this many rows")]
RECORD_COLUMNS = ("time", "request_id", "city", "user", "model", "status", "http", "in", "out", "microcredits", "ms")
SUMMARY_METRICS = ("requests", "errors", "input_tokens", "output_tokens", "total_tokens", "microcredits")


def _print_summary(rows: list[UsageSummaryRow], group_by: str, as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    table = [
        (r.key, r.requests, r.errors, r.input_tokens, r.output_tokens, r.total_tokens, r.charge_microcredits)
        for r in rows
    ]
    print_table("usage", (group_by, *SUMMARY_METRICS), table)


def _print_records(records: list[UsageRecord], as_json: bool) -> None:
    if as_json:
        print_json(records)
        return
    rows = [
        (
            when(r.created_at_ms),
            r.request_id,
            r.city_id,
            r.user_id,
            r.model_id,
            r.status,
            r.http_status,
            r.input_tokens,
            r.output_tokens,
            r.charge_microcredits,
            r.duration_ms,
        )
        for r in records
    ]
    print_table("usage", RECORD_COLUMNS, rows)


def usage(
    ctx: typer.Context,
    city_id: CityOption = None,
    user_id: UserOption = None,
    model: Annotated[str | None, typer.Option(help="only this model id")] = None,
    status: Annotated[CallStatus | None, typer.Option(help="only calls with this status")] = None,
    since: Annotated[str | None, typer.Option(help=f"from (inclusive): {TIME_HELP}")] = None,
    until: Annotated[str | None, typer.Option(help=f"to (exclusive): {TIME_HELP}")] = None,
    group_by: Annotated[GroupBy | None, typer.Option(help="totals per city, user, model or UTC day")] = None,
    limit: LimitOption = 100,
    as_json: JsonOption = False,
) -> None:
    """Usage records (newest first), or with --group-by requests, errors, tokens and credits per group."""
    status_value = status.value if status else None
    with admin_client(ctx) as admin:
        if group_by is not None:
            rows = admin.usage.summary(
                group_by=group_by.value,
                city_id=city_id,
                user_id=user_id,
                model=model,
                status=status_value,
                since=since,
                until=until,
                limit=limit,
            )
            _print_summary(rows, group_by.value, as_json)
            return
        records = admin.usage.list(
            city_id=city_id, user_id=user_id, model=model, status=status_value, since=since, until=until, limit=limit
        )
    _print_records(records, as_json)


def jobs(
    ctx: typer.Context,
    status: Annotated[JobStatus | None, typer.Option(help="only jobs with this status")] = None,
    city_id: CityOption = None,
    user_id: UserOption = None,
    limit: LimitOption = 100,
    as_json: JsonOption = False,
) -> None:
    """Image jobs across cities, newest first."""
    with admin_client(ctx) as admin:
        found = admin.jobs.list(status=status.value if status else None, city_id=city_id, user_id=user_id, limit=limit)
    if as_json:
        print_json(found)
        return
    columns = ("job_id", "status", "city", "user", "model", "microcredits", "created", "finished", "error")
    rows = [
        (
            j.job_id,
            j.status,
            j.city_id,
            j.user_id,
            j.model_id,
            j.charge_microcredits,
            when(j.created_at_ms),
            when(j.finished_at_ms),
            j.error,
        )
        for j in found
    ]
    print_table("jobs", columns, rows)
