"""The console's pages: each loader reads through the same functions the JSON admin routes call."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, cast, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from markupsafe import Markup
from starlette.responses import HTMLResponse, StreamingResponse

from downcity.cities import CITY_ID_PATTERN
from downcity.errors import DowncityHTTPError
from downcity.http.console.context import ConsoleDep, Problem, problem
from downcity.http.console.overview import WINDOW_MS, Window, load_overview
from downcity.http.console.rendering import PAGE_HEADERS
from downcity.http.routes import balance as balance_routes
from downcity.http.routes import cities as city_routes
from downcity.http.routes import env as env_routes
from downcity.http.routes import quotas as quota_routes
from downcity.jobs.store import JobStore
from downcity.ledger.usage import Bucket, SeriesBy, UsageFilter, UsageStatus, list_usage, parse_time
from downcity.runtime import Runtime
from downcity.store.database import now_ms

router = APIRouter(prefix="/console", include_in_schema=False)

SystemProbe = Callable[[], Awaitable[dict[str, Any]]]
"""What `downcity status --json` prints about the cluster this app runs on."""

USAGE_PAGE = 50
CSV_BATCH = 1000
MAX_CSV_ROWS = 100_000
JOB_STATUSES = ("queued", "running", "succeeded", "failed")
USAGE_STATUSES: tuple[str, ...] = get_args(UsageStatus)
CSV_COLUMNS = (
    "created_at_ms",
    "request_id",
    "city_id",
    "user_id",
    "pathway",
    "model_id",
    "provider_id",
    "status",
    "http_status",
    "error_type",
    "input_tokens",
    "output_tokens",
    "duration_ms",
    "charge_microcredits",
)
Text = Annotated[str | None, Query(max_length=200)]


def _json_script(value: Any) -> Markup:
    """JSON safe to place inside a `<script type="application/json">` element."""
    text = json.dumps(value, separators=(",", ":"))
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


@router.get("", response_class=HTMLResponse)
async def overview(
    console: ConsoleDep, window: Window = "24h", bucket: Bucket = "hour", series: SeriesBy = "city"
) -> HTMLResponse:
    """Requests, errors, tokens and credits over time per city or model; top spenders; provider errors."""
    data = await load_overview(console.runtime, window, bucket, series)
    context = {"o": data, "chart_json": _json_script(data.chart_data()), "windows": list(WINDOW_MS)}
    return console.page("overview.html", "/console", context)


async def cities_context(runtime: Runtime) -> dict[str, Any]:
    """The cities table."""
    return {"cities": (await city_routes.list_cities(runtime, None))["items"]}


@router.get("/cities", response_class=HTMLResponse)
async def cities(console: ConsoleDep) -> HTMLResponse:
    """Every city, with create, pause and activate."""
    return console.page("cities.html", "/console/cities", await cities_context(console.runtime))


@router.get("/tokens", response_class=HTMLResponse)
async def tokens(console: ConsoleDep) -> HTMLResponse:
    """Issue and revoke user tokens."""
    return console.page("tokens.html", "/console/tokens", await cities_context(console.runtime))


async def keys_context(runtime: Runtime) -> dict[str, Any]:
    """Stored provider keys (previews only) and every key name a provider declares."""
    declared = sorted(
        {
            name
            for provider in runtime.federation.providers.values()
            for name in (*provider.env, provider.env_key)
            if name
        }
    )
    return {"keys": (await env_routes.list_env(runtime, None))["items"], "declared": declared}


@router.get("/keys", response_class=HTMLResponse)
async def keys(console: ConsoleDep) -> HTMLResponse:
    """Set, rotate and remove provider keys."""
    return console.page("keys.html", "/console/keys", await keys_context(console.runtime))


async def balances_context(runtime: Runtime, city_id: str | None, user_id: str | None) -> dict[str, Any]:
    """The account named by city and user (when both are given), its history and a fresh idempotency key."""
    context: dict[str, Any] = {
        "city_id": city_id or "",
        "user_id": user_id or "",
        "account": None,
        "history": [],
        "idempotency_key": f"console-{uuid.uuid4().hex}",
        "cities": (await city_routes.list_cities(runtime, None))["items"],
    }
    if city_id and user_id:
        if not CITY_ID_PATTERN.fullmatch(city_id):
            raise DowncityHTTPError(422, "invalid", "city_id is not a valid city id", "city_id")
        context["account"] = await balance_routes.get_balance(city_id, user_id, runtime, None)
        context["history"] = (await balance_routes.history(city_id, user_id, runtime, None))["items"]
    return context


@router.get("/balances", response_class=HTMLResponse)
async def balances(console: ConsoleDep, city_id: Text = None, user_id: Text = None) -> HTMLResponse:
    """Find an account; credit or debit it; its history."""
    try:
        context = await balances_context(console.runtime, city_id, user_id)
    except DowncityHTTPError as error:
        context = await balances_context(console.runtime, None, None)
        return console.failed("balances.html", "/console/balances", context, problem(error))
    return console.page("balances.html", "/console/balances", context)


def usage_filter(
    city_id: str | None,
    user_id: str | None,
    model: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
) -> UsageFilter:
    """The filter the usage routes build from the same fields (blank fields filter nothing)."""
    if status and status not in USAGE_STATUSES:
        raise DowncityHTTPError(422, "invalid", f"status must be one of {', '.join(USAGE_STATUSES)}", "status")
    moment = now_ms()
    return UsageFilter(
        city_id=city_id or None,
        user_id=user_id or None,
        model=model or None,
        status=cast(UsageStatus, status) if status else None,
        since_ms=parse_time(since, "since", moment) if since else None,
        until_ms=parse_time(until, "until", moment) if until else None,
    )


@router.get("/usage", response_class=HTMLResponse)
async def usage(
    request: Request,
    console: ConsoleDep,
    city_id: Text = None,
    user_id: Text = None,
    model: Text = None,
    status: Text = None,
    since: Text = None,
    until: Text = None,
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
) -> HTMLResponse:
    """Usage records, filtered and paginated; htmx asks for the results fragment alone."""
    fields = {"city_id": city_id, "user_id": user_id, "model": model, "status": status, "since": since, "until": until}
    context: dict[str, Any] = {
        "fields": {name: value or "" for name, value in fields.items()},
        "statuses": USAGE_STATUSES,
        "models": sorted(console.runtime.federation.models),
        "records": [],
        "page": page,
        "has_next": False,
        "query": urlencode([(name, value) for name, value in request.query_params.multi_items() if name != "page"]),
        "error": None,
    }
    try:
        found = await list_usage(console.runtime.db, usage_filter(**fields), USAGE_PAGE + 1, (page - 1) * USAGE_PAGE)
    except DowncityHTTPError as error:
        context["error"] = problem(error)
    else:
        context["records"], context["has_next"] = found[:USAGE_PAGE], len(found) > USAGE_PAGE
    template = "usage_results.html" if request.headers.get("HX-Request") == "true" else "usage.html"
    status_code = context["error"].status if isinstance(context["error"], Problem) else 200
    return console.page(template, "/console/usage", context, status_code)


@router.get("/usage.csv")
async def usage_csv(
    console: ConsoleDep,
    city_id: Text = None,
    user_id: Text = None,
    model: Text = None,
    status: Text = None,
    since: Text = None,
    until: Text = None,
) -> StreamingResponse:
    """Every matching record (up to 100,000), newest first, as CSV."""
    matching = usage_filter(city_id, user_id, model, status, since, until)
    db = console.runtime.db

    async def rows() -> AsyncIterator[str]:
        yield ",".join(CSV_COLUMNS) + "\r\n"
        for offset in range(0, MAX_CSV_ROWS, CSV_BATCH):
            batch = await list_usage(db, matching, CSV_BATCH, offset)
            for record in batch:
                values = record.model_dump()
                yield ",".join(_csv_cell(values[column]) for column in CSV_COLUMNS) + "\r\n"
            if len(batch) < CSV_BATCH:
                return

    headers = {**PAGE_HEADERS, "Content-Disposition": 'attachment; filename="usage.csv"'}
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers=headers)


def _csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    # A leading = + - @ would make a spreadsheet run the cell as a formula.
    if text[:1] in ("=", "+", "-", "@") and not text.lstrip("-").isdigit():
        text = "'" + text
    if any(char in text for char in ',"\r\n'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def _images(result: dict[str, Any] | None) -> list[str]:
    parts = (result or {}).get("parts") or []
    return [part["url"] for part in parts if isinstance(part, dict) and part.get("type") == "file" and part.get("url")]


@router.get("/jobs", response_class=HTMLResponse)
async def jobs(console: ConsoleDep, status: Text = None, city_id: Text = None) -> HTMLResponse:
    """Image jobs by status: the result image when succeeded, the error when failed."""
    if status and status not in JOB_STATUSES:
        status = None
    records = await JobStore(console.runtime.db).list(status=status or None, city_id=city_id or None, limit=100)
    items = [{**record.to_admin(), "images": _images(record.result)} for record in records]
    context = {"jobs": items, "status": status or "", "statuses": JOB_STATUSES, "city_id": city_id or ""}
    return console.page("jobs.html", "/console/jobs", context)


async def quotas_context(runtime: Runtime, city_id: str | None) -> dict[str, Any]:
    """The quotas of one city (or of every city), with each budget's use in its window when a city is named."""
    listed = await quota_routes.list_quotas(runtime, None, city_id)
    return {
        "quotas": listed["items"],
        "consumption": listed["consumption"],
        "city_id": city_id or "",
        "cities": (await city_routes.list_cities(runtime, None))["items"],
    }


@router.get("/quotas", response_class=HTMLResponse)
async def quotas(console: ConsoleDep, city_id: Text = None) -> HTMLResponse:
    """Quotas (RPM, TPM, credit budgets), declared and stored, their use in the current windows, and forms."""
    return console.page("quotas.html", "/console/quotas", await quotas_context(console.runtime, city_id or None))


@router.get("/system", response_class=HTMLResponse)
async def system(request: Request, console: ConsoleDep) -> HTMLResponse:
    """Readiness checks, and on a Ray cluster what `downcity status` shows."""
    report = await console.runtime.readiness.report()
    probe: SystemProbe | None = request.app.state.console_system
    cluster: dict[str, Any] | None = None
    cluster_error: str | None = None
    if probe is not None:
        try:
            cluster = await probe()
        except Exception as error:
            # Only the type: a Ray error's text may carry a database URL.
            cluster_error = type(error).__name__
    context = {"ready": report.ready, "checks": report.checks, "cluster": cluster, "cluster_error": cluster_error}
    return console.page("system.html", "/console/system", context)
