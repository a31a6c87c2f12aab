"""`downcity quota set|list|remove`: a city's quotas, from a terminal."""

from __future__ import annotations

from typing import Annotated

import typer

from downcity.cli.admin import parse_metadata
from downcity.cli.session import JsonOption, admin_client, console, print_json, print_table
from downcity.client import QuotaInfo, QuotaListing

quota_app = typer.Typer(
    help="Quotas: requests and tokens per minute, credits per day or month, per city, user, plan or model.",
    no_args_is_help=True,
)

QUOTA_COLUMNS = ("id", "source", "city", "scope", "rpm", "tpm", "credits/day", "credits/month")
USE_COLUMNS = ("bucket", "metric", "used", "window_end_ms")


def _scope(quota: QuotaInfo) -> str:
    parts = [f"user={quota.user_id}"] if quota.user_id else []
    parts += [f"{key}={value}" for key, value in quota.metadata.items()]
    parts += [f"model={quota.model}"] if quota.model else []
    parts += ["per user"] if quota.per_user else []
    return ", ".join(parts) or "whole city"


def _row(quota: QuotaInfo) -> list[object]:
    limits = (quota.requests_per_minute, quota.tokens_per_minute, quota.credits_per_day, quota.credits_per_month)
    return [
        quota.id,
        quota.source,
        quota.city_id or "every city",
        _scope(quota),
        *("-" if v is None else v for v in limits),
    ]


def _print(listing: QuotaListing, as_json: bool) -> None:
    if as_json:
        print_json(listing)
        return
    print_table("quotas", QUOTA_COLUMNS, [_row(quota) for quota in listing.items])
    if listing.consumption:
        rows = [[use.bucket, use.metric, use.used, use.window_end_ms] for use in listing.consumption]
        print_table("budgets in use", USE_COLUMNS, rows)


@quota_app.command("set")
def quota_set(
    ctx: typer.Context,
    quota_id: Annotated[str, typer.Argument(help="the quota's id within its city")],
    city_id: Annotated[str, typer.Option("--city", help="the city it limits")],
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="tokens per minute")] = None,
    per_day: Annotated[int | None, typer.Option("--credits-per-day", min=0, help="microcredits per UTC day")] = None,
    per_month: Annotated[
        int | None, typer.Option("--credits-per-month", min=0, help="microcredits per UTC month")
    ] = None,
    user_id: Annotated[str | None, typer.Option("--user", help="only this user")] = None,
    metadata: Annotated[
        str | None, typer.Option(help='only tokens with these metadata values, e.g. {"plan": "starter"}')
    ] = None,
    model: Annotated[str | None, typer.Option(help="only calls to this model")] = None,
    per_user: Annotated[bool, typer.Option("--per-user", help="one budget per user instead of one per city")] = False,
    as_json: JsonOption = False,
) -> None:
    """Store a city's quota (replacing one of the same id); every replica applies it within about a second."""
    with admin_client(ctx) as admin:
        quota = admin.quotas.set(
            city_id,
            quota_id,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            credits_per_day=per_day,
            credits_per_month=per_month,
            user_id=user_id,
            metadata=parse_metadata(metadata),
            model=model,
            per_user=per_user,
        )
    _print(QuotaListing(items=[quota]), as_json)


@quota_app.command("list")
def quota_list(
    ctx: typer.Context,
    city_id: Annotated[str | None, typer.Option("--city", help="one city, with its budgets in use")] = None,
    as_json: JsonOption = False,
) -> None:
    """The quotas in force: the Federation's declared ones and every city's stored ones."""
    with admin_client(ctx) as admin:
        _print(admin.quotas.list(city_id), as_json)


@quota_app.command("remove")
def quota_remove(
    ctx: typer.Context,
    quota_id: Annotated[str, typer.Argument(help="the quota's id")],
    city_id: Annotated[str, typer.Option("--city", help="its city")],
) -> None:
    """Remove a city's stored quota."""
    with admin_client(ctx) as admin:
        removed = admin.quotas.remove(city_id, quota_id)
    console.print(f"removed: {str(removed).lower()}")
