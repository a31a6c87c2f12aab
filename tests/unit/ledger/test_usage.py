"""Usage queries, the usage routes and the clients' usage calls, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from downcity.client import AsyncAdminClient, AsyncUserClient, UsageRecord, UsageSummaryRow
from downcity.demo.federation import build_demo_federation
from downcity.errors import DowncityHTTPError
from downcity.http.app import create_app
from downcity.ledger.usage import UsageFilter, list_usage, parse_time, summarize_usage
from downcity.local import open_local_runtime
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.store import Database
from downcity.store.schema import usage_records

ADMIN_KEY = "usage-test-admin"
BASE_URL = "http://downcity.test"
DAY_MS = 86_400_000
# 2024-05-01T00:00:00Z
MAY_1 = 1_714_521_600_000
NOW = MAY_1 + 3 * DAY_MS


def row(request_id: str, **values: Any) -> dict[str, Any]:
    """A usage row with defaults: web / alice / demo-chat, ok, on May 1st."""
    return {
        "request_id": request_id,
        "city_id": "web",
        "user_id": "alice",
        "pathway": "text",
        "model_id": "demo-chat",
        "provider_id": "demo",
        "status": "ok",
        "http_status": 200,
        "error_type": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "charge_microcredits": 0,
        "created_at_ms": MAY_1,
        **values,
    }


ROWS = [
    row("r1", input_tokens=10, output_tokens=20, charge_microcredits=50, created_at_ms=MAY_1 + 1),
    row("r2", input_tokens=1, output_tokens=2, charge_microcredits=5, created_at_ms=MAY_1 + 2),
    row("r3", status="error", http_status=502, error_type="upstream_error", created_at_ms=MAY_1 + DAY_MS),
    row("r4", user_id="bob", model_id="demo-vision", charge_microcredits=700, created_at_ms=MAY_1 + DAY_MS + 5),
    row("r5", city_id="ext", user_id="alice", status="refused", http_status=402, created_at_ms=MAY_1 + 2 * DAY_MS),
]


async def insert_rows(db: Database, rows: list[dict[str, Any]] = ROWS) -> None:
    async with db.begin() as conn:
        await conn.execute(usage_records.insert(), rows)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1714521600000", MAY_1),
        ("2024-05-01", MAY_1),
        ("2024-05-01T00:00:00Z", MAY_1),
        ("2024-05-01T02:00:00+02:00", MAY_1),
        ("2024-05-01T00:00:01", MAY_1 + 1000),
        ("24h", NOW - DAY_MS),
        ("2d", NOW - 2 * DAY_MS),
        ("90m", NOW - 90 * 60_000),
    ],
)
def test_parse_time_reads_epoch_ms_iso_and_durations(text: str, expected: int) -> None:
    assert parse_time(text, "since", NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "-5", "5y", "2024-13-01", "1" * 16, "١٢٣"])
def test_parse_time_refuses_anything_else_naming_the_field(text: str) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        parse_time(text, "until", NOW)
    assert (caught.value.status, caught.value.type, caught.value.field) == (422, "invalid_request", "until")


def test_until_not_after_since_is_refused() -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        UsageFilter(since_ms=MAY_1, until_ms=MAY_1)
    assert (caught.value.status, caught.value.field) == (422, "until")


async def test_list_returns_every_record_newest_first(db: Database) -> None:
    await insert_rows(db)
    records = await list_usage(db, UsageFilter())
    assert [r.request_id for r in records] == ["r5", "r4", "r3", "r2", "r1"]
    assert records[-1].model_dump() == {
        "request_id": "r1",
        "city_id": "web",
        "user_id": "alice",
        "pathway": "text",
        "model_id": "demo-chat",
        "provider_id": "demo",
        "fallback_from": None,
        "status": "ok",
        "http_status": 200,
        "error_type": None,
        "input_tokens": 10,
        "output_tokens": 20,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "duration_ms": 0,
        "ttfb_ms": None,
        "charge_microcredits": 50,
        "attempts": None,
        "key_name": None,
        "class_picocredits": {},
        "created_at_ms": MAY_1 + 1,
    }


@pytest.mark.parametrize(
    ("usage_filter", "expected"),
    [
        (UsageFilter(city_id="ext"), ["r5"]),
        (UsageFilter(user_id="bob"), ["r4"]),
        (UsageFilter(model="demo-chat", city_id="web"), ["r3", "r2", "r1"]),
        (UsageFilter(status="error"), ["r3"]),
        (UsageFilter(since_ms=MAY_1 + 2, until_ms=MAY_1 + DAY_MS + 5), ["r3", "r2"]),
    ],
)
async def test_list_applies_every_filter(db: Database, usage_filter: UsageFilter, expected: list[str]) -> None:
    await insert_rows(db)
    assert [r.request_id for r in await list_usage(db, usage_filter)] == expected


async def test_list_keeps_the_newest_up_to_the_limit(db: Database) -> None:
    await insert_rows(db)
    assert [r.request_id for r in await list_usage(db, UsageFilter(), limit=2)] == ["r5", "r4"]


async def test_list_refuses_a_limit_out_of_range(db: Database) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await list_usage(db, UsageFilter(), limit=1001)
    assert caught.value.field == "limit"


async def test_summary_by_model_totals_requests_errors_tokens_and_credits(db: Database) -> None:
    await insert_rows(db)
    rows = await summarize_usage(db, UsageFilter(), "model")
    assert [r.model_dump() for r in rows] == [
        {
            "key": "demo-vision",
            "requests": 1,
            "errors": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "total_tokens": 0,
            "charge_microcredits": 700,
            "class_picocredits": {},
        },
        {
            "key": "demo-chat",
            "requests": 4,
            "errors": 2,
            "input_tokens": 11,
            "output_tokens": 22,
            "total_tokens": 33,
            "charge_microcredits": 55,
            "class_picocredits": {},
        },
    ]


async def test_summary_by_day_lists_utc_days_newest_first(db: Database) -> None:
    await insert_rows(db)
    rows = await summarize_usage(db, UsageFilter(), "day")
    assert [(r.key, r.requests, r.errors, r.charge_microcredits) for r in rows] == [
        ("2024-05-03", 1, 1, 0),
        ("2024-05-02", 2, 1, 700),
        ("2024-05-01", 2, 0, 55),
    ]


async def test_summary_by_user_within_one_city(db: Database) -> None:
    await insert_rows(db)
    rows = await summarize_usage(db, UsageFilter(city_id="web"), "user")
    assert [(r.key, r.requests, r.charge_microcredits) for r in rows] == [("bob", 1, 700), ("alice", 3, 55)]


async def test_summary_by_city_orders_equal_spend_by_requests(db: Database) -> None:
    await insert_rows(db)
    await insert_rows(db, [row("r6", city_id="ext", charge_microcredits=755)])
    rows = await summarize_usage(db, UsageFilter(), "city")
    assert [(r.key, r.requests, r.charge_microcredits) for r in rows] == [("web", 4, 755), ("ext", 2, 755)]


async def test_summary_of_no_records_is_empty(db: Database) -> None:
    assert await summarize_usage(db, UsageFilter(), "day") == []


@dataclass
class App:
    runtime: Runtime
    transport: httpx.ASGITransport

    def admin(self) -> AsyncAdminClient:
        return AsyncAdminClient(BASE_URL, admin_key=ADMIN_KEY, transport=self.transport)

    async def user(self, city_id: str, user_id: str) -> AsyncUserClient:
        issued = await self.runtime.security.issuer.apply(city_id, user_id)
        return AsyncUserClient(BASE_URL, city_id=city_id, user_token=issued.user_token, transport=self.transport)

    def http(self, credential: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {credential}"}
        return httpx.AsyncClient(base_url=BASE_URL, headers=headers, transport=self.transport)


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    runtime = await open_local_runtime(build_demo_federation(), settings)
    for city_id in ("web", "ext"):
        await runtime.cities.create(city_id.title(), city_id)
    await runtime.refresh()
    await insert_rows(runtime.db)
    yield App(runtime, httpx.ASGITransport(app=create_app(runtime, manage_runtime=False)))
    await runtime.stop()


async def test_admin_client_lists_records_with_filters(app: App) -> None:
    async with app.admin() as admin:
        records = await admin.usage.list(user_id="alice", since="2024-05-02", limit=10)
    assert [(r.request_id, r.city_id, r.status) for r in records] == [("r5", "ext", "refused"), ("r3", "web", "error")]
    assert isinstance(records[0], UsageRecord)


async def test_admin_client_summarizes_by_day_within_a_window(app: App) -> None:
    async with app.admin() as admin:
        rows = await admin.usage.summary(group_by="day", since=MAY_1, until="2024-05-03")
    assert [(r.key, r.requests, r.total_tokens, r.charge_microcredits) for r in rows] == [
        ("2024-05-02", 2, 0, 700),
        ("2024-05-01", 2, 33, 55),
    ]
    assert isinstance(rows[0], UsageSummaryRow)


async def test_summary_route_names_its_grouping(app: App) -> None:
    async with app.http(ADMIN_KEY) as http:
        response = await http.get("/v1/usage/summary", params={"group_by": "city", "city_id": "ext"})
    assert response.status_code == 200
    assert response.json() == {
        "group_by": "city",
        "items": [
            {
                "key": "ext",
                "requests": 1,
                "errors": 1,
                "input_tokens": 0,
                "output_tokens": 0,
                "total_tokens": 0,
                "charge_microcredits": 0,
                "class_picocredits": {},
            }
        ],
    }


async def test_user_sees_only_their_own_records_in_their_city(app: App) -> None:
    async with await app.user("web", "alice") as client:
        records = await client.usage()
    assert [r.request_id for r in records] == ["r3", "r2", "r1"]


async def test_user_usage_filters_by_status(app: App) -> None:
    async with await app.user("web", "alice") as client:
        records = await client.usage(status="ok", limit=1)
    assert [r.request_id for r in records] == ["r2"]


@pytest.mark.parametrize("path", ["/v1/usage/list", "/v1/usage/summary"])
async def test_a_user_token_gets_403_on_admin_usage_routes(app: App, path: str) -> None:
    issued = await app.runtime.security.issuer.apply("web", "alice")
    async with app.http(issued.user_token) as http:
        response = await http.get(path)
    assert (response.status_code, response.json()["error"]["type"]) == (403, "forbidden")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "last week"}, "since"),
        ({"since": "2d", "until": "3d"}, "until"),
        ({"status": "fine"}, "status"),
        ({"group_by": "hour"}, "group_by"),
        ({"limit": "0"}, "limit"),
    ],
)
async def test_bad_usage_filters_get_422_naming_the_field(app: App, params: dict[str, str], field: str) -> None:
    async with app.http(ADMIN_KEY) as http:
        response = await http.get("/v1/usage/summary", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
