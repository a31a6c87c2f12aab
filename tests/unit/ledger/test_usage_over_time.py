"""Usage per hour or day and per city or model, and totals per provider and account, on SQLite and PostgreSQL."""

from __future__ import annotations

from downcity.ledger.usage import MS_PER_HOUR, UsageFilter, summarize_usage, usage_over_time
from downcity.store import Database
from tests.unit.ledger.test_usage import DAY_MS, MAY_1, ROWS, insert_rows, row


async def test_usage_per_day_and_city_is_oldest_first(db: Database) -> None:
    await insert_rows(db)
    rows = await usage_over_time(db, UsageFilter(), "day", "city")
    assert [(r.start_ms, r.key, r.requests, r.errors, r.charge_microcredits) for r in rows] == [
        (MAY_1, "web", 2, 0, 55),
        (MAY_1 + DAY_MS, "web", 2, 1, 700),
        (MAY_1 + 2 * DAY_MS, "ext", 1, 1, 0),
    ]


async def test_usage_per_hour_and_model_within_a_filter(db: Database) -> None:
    await insert_rows(db, [*ROWS, row("r6", model_id="demo-vision", created_at_ms=MAY_1 + MS_PER_HOUR + 7)])
    rows = await usage_over_time(db, UsageFilter(until_ms=MAY_1 + DAY_MS), "hour", "model")
    assert [(r.start_ms, r.key, r.requests, r.total_tokens) for r in rows] == [
        (MAY_1, "demo-chat", 2, 33),
        (MAY_1 + MS_PER_HOUR, "demo-vision", 1, 0),
    ]


async def test_totals_per_provider_and_per_account(db: Database) -> None:
    await insert_rows(db, [*ROWS, row("r6", provider_id=None, status="refused", created_at_ms=MAY_1 + 9)])
    providers = await summarize_usage(db, UsageFilter(), "provider")
    assert [(r.key, r.requests, r.errors) for r in providers] == [("demo", 5, 2), (None, 1, 1)]
    accounts = await summarize_usage(db, UsageFilter(), "account")
    assert [(r.key, r.charge_microcredits) for r in accounts] == [("web/bob", 700), ("web/alice", 55), ("ext/alice", 0)]
