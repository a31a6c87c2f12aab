"""An op whose write lost a unique-key race is retried once, alone, on a fresh read; any other failure is a 503."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

import downcity.ledger.ledger as ledger_module
from downcity.errors import DowncityHTTPError
from downcity.ledger import Balance, Ledger
from downcity.ledger.store import write_batch
from downcity.store import Database
from downcity.store.schema import ledger_entries


@pytest.fixture
async def ledger(db: Database) -> AsyncIterator[Ledger]:
    started = Ledger(db)
    await started.start()
    yield started
    await started.close()


class FailingWrites:
    """Fails the Ledger's next batch writes with `failures`, one each in order, then writes as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failures: list[Exception] = []

        async def write(db: Database, conn: Any, state: Any) -> bool:
            if self.failures:
                raise self.failures.pop(0)
            return await write_batch(db, conn, state)

        monkeypatch.setattr(ledger_module, "write_batch", write)


@pytest.fixture
def failing_writes(monkeypatch: pytest.MonkeyPatch) -> FailingWrites:
    return FailingWrites(monkeypatch)


def _lost_race() -> IntegrityError:
    return IntegrityError("INSERT INTO ledger_entries", None, Exception("duplicate idempotency_key"))


async def _entries(db: Database) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(ledger_entries))).scalar_one())


async def test_an_op_that_lost_a_unique_key_race_commits_on_its_retry(
    ledger: Ledger, db: Database, failing_writes: FailingWrites
) -> None:
    failing_writes.failures = [_lost_race()]
    entry = await ledger.credit("top-up-1", "alice", 10_000)
    assert (entry.idempotency_key, entry.amount_microcredits, entry.balance_after_microcredits) == (
        "top-up-1",
        10_000,
        10_000,
    )
    assert (failing_writes.failures, await _entries(db)) == ([], 1)
    assert await ledger.balance("alice") == Balance(user_id="alice", balance=10_000, held=0, available=10_000)


async def test_an_op_whose_retry_fails_too_is_a_503_naming_and_logging_the_second_failure(
    ledger: Ledger, db: Database, failing_writes: FailingWrites, caplog: pytest.LogCaptureFixture
) -> None:
    failing_writes.failures = [_lost_race(), RuntimeError("boom")]
    with caplog.at_level(logging.ERROR, logger="downcity.ledger.ledger"), pytest.raises(DowncityHTTPError) as failed:
        await ledger.credit("top-up-1", "alice", 10_000)
    assert (failed.value.status, failed.value.type, failed.value.message) == (
        503,
        "ledger_unavailable",
        "the ledger could not commit: RuntimeError",
    )
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("ERROR", "ledger op credit 'top-up-1' failed: RuntimeError('boom')")
    ]
    assert (failing_writes.failures, await _entries(db)) == ([], 0)


async def test_an_op_failing_otherwise_than_on_a_unique_key_is_not_retried(
    ledger: Ledger, db: Database, failing_writes: FailingWrites
) -> None:
    failing_writes.failures = [RuntimeError("boom"), RuntimeError("not reached")]
    with pytest.raises(DowncityHTTPError) as failed:
        await ledger.credit("top-up-1", "alice", 10_000)
    assert (failed.value.status, failed.value.message) == (503, "the ledger could not commit: RuntimeError")
    assert ([str(failure) for failure in failing_writes.failures], await _entries(db)) == (["not reached"], 0)
