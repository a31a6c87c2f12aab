"""`QuotaBook`: guarded window deltas, all-or-nothing admission, true-ups, refunds and the window clock."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event

from downcity.quotas import Claim, Clock, Quota, QuotaBook, bucket_of, window_of
from downcity.store import Database

MINUTE = 60_000


def _rpm(bucket: str = "b", limit: int = 5) -> Claim:
    return Claim(bucket, "requests", 1, limit)


@pytest.fixture
def book(db: Database) -> QuotaBook:
    clock = Clock()
    clock.freeze(1_000 * MINUTE + 10_000)
    return QuotaBook(db, clock)


async def test_concurrent_admissions_stop_at_exactly_the_limit(book: QuotaBook) -> None:
    decisions = await asyncio.gather(*(book.admit("c", [_rpm(limit=30)]) for _ in range(100)))
    assert sum(d.admitted for d in decisions) == 30
    assert {d.refused for d in decisions if not d.admitted} == {"requests"}


async def test_admissions_in_flight_together_share_a_commit_and_a_refused_one_takes_nothing(
    book: QuotaBook,
) -> None:
    commits: list[int] = []
    event.listen(book.db.engine.sync_engine, "commit", lambda conn: commits.append(1))
    tight = [_rpm("a", 100), Claim("t", "tokens", 10, 45)]
    decisions = await asyncio.gather(*(book.admit("c", tight) for _ in range(10)))
    assert [d.admitted for d in decisions] == [True] * 4 + [False] * 6
    assert 1 <= len(commits) < 10
    rows = {(row["bucket"], row["metric"]): row["used"] for row in await book.consumption("c")}
    assert rows == {(tight[0].bucket, "requests"): 4, (tight[1].bucket, "tokens"): 40}


async def test_the_standing_counts_down_and_names_the_reset(book: QuotaBook) -> None:
    first = await book.admit("c", [_rpm(limit=2)])
    second = await book.admit("c", [_rpm(limit=2)])
    refused = await book.admit("c", [_rpm(limit=2)])
    assert [d.standings["requests"].remaining for d in (first, second, refused)] == [1, 0, 0]
    assert refused.standings["requests"].reset_ms == MINUTE - 10_000


async def test_one_claim_that_does_not_fit_takes_none(book: QuotaBook) -> None:
    refused = await book.admit("c", [_rpm("a", 5), Claim("b", "tokens", 200, 100)])
    admitted = await book.admit("c", [_rpm("a", 1)])
    assert (refused.refused, admitted.admitted) == ("tokens", True)


async def test_the_next_window_admits_again(book: QuotaBook) -> None:
    assert (await book.admit("c", [_rpm(limit=1)])).admitted
    assert not (await book.admit("c", [_rpm(limit=1)])).admitted
    book.clock.advance(MINUTE)
    assert (await book.admit("c", [_rpm(limit=1)])).admitted


async def test_a_true_up_refunds_unused_tokens(book: QuotaBook) -> None:
    decision = await book.admit("c", [Claim("b", "tokens", 80, 100)])
    assert not (await book.admit("c", [Claim("b", "tokens", 30, 100)])).admitted
    await book.settle(decision.taken, {"tokens": 20})
    assert (await book.admit("c", [Claim("b", "tokens", 80, 100)])).admitted


async def test_a_refund_gives_everything_back(book: QuotaBook) -> None:
    decision = await book.admit("c", [_rpm(limit=1), Claim("b", "credits_day", 500, 500)])
    await book.refund(decision.taken)
    assert (await book.admit("c", [_rpm(limit=1), Claim("b", "credits_day", 500, 500)])).admitted


async def test_consumption_lists_the_citys_current_windows_only(book: QuotaBook) -> None:
    await book.admit("c", [_rpm("c-bucket", 5)])
    await book.admit("other", [_rpm("other-bucket", 5)])
    (row,) = await book.consumption("c")
    assert (row["bucket"], row["metric"], row["used"]) == ("c-bucket", "requests", 1)
    book.clock.advance(MINUTE)
    assert await book.consumption("c") == []


def test_windows_are_minutes_utc_days_and_calendar_months() -> None:
    march_31 = 1_743_422_400_000  # 2025-03-31T12:00:00Z
    assert window_of("requests", march_31) == (march_31, march_31 + MINUTE)
    assert window_of("credits_day", march_31) == (march_31 - 43_200_000, march_31 + 43_200_000)
    assert window_of("credits_month", march_31) == (1_740_787_200_000, 1_743_465_600_000)


def test_a_quota_binds_by_city_user_metadata_and_model() -> None:
    quota = Quota(id="q", city_id="web", metadata={"plan": "starter"}, model="m", requests_per_minute=1)
    assert quota.binds("web", "u", {"plan": "starter"}, "m")
    assert not quota.binds("app", "u", {"plan": "starter"}, "m")
    assert not quota.binds("web", "u", {"plan": "pro"}, "m")
    assert not quota.binds("web", "u", {"plan": "starter"}, "other")


def test_budgets_are_per_city_or_per_user() -> None:
    shared = Quota(id="q", requests_per_minute=1)
    own = Quota(id="q", requests_per_minute=1, per_user=True)
    assert bucket_of(shared, "federation", "web", "u1") == bucket_of(shared, "federation", "web", "u2")
    assert bucket_of(shared, "federation", "web", "u1") != bucket_of(shared, "federation", "app", "u1")
    assert bucket_of(own, "city", "web", "u1") != bucket_of(own, "city", "web", "u2")


def test_a_quota_without_a_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one limit"):
        Quota(id="q")
