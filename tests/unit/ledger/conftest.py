"""Fixtures the ledger tests share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiosqlite
import asyncpg
import pytest


@pytest.fixture
def lose_commit_ack(monkeypatch: pytest.MonkeyPatch, backend: str) -> Callable[[], None]:
    """Arms a fault: the next COMMIT reaches the database, then its acknowledgement is lost (an error)."""
    armed = False

    def arm() -> None:
        nonlocal armed
        armed = True

    def lose_ack() -> None:
        nonlocal armed
        if armed:
            armed = False
            raise ConnectionResetError("the acknowledgement of COMMIT was lost")

    if backend == "postgresql":
        execute = asyncpg.connection.Connection.execute

        async def execute_then_lose_ack(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            result = await execute(self, query, *args, **kwargs)
            if query.strip().rstrip(";").upper() == "COMMIT":
                lose_ack()
            return result

        monkeypatch.setattr(asyncpg.connection.Connection, "execute", execute_then_lose_ack)
    else:
        commit = aiosqlite.Connection.commit

        async def commit_then_lose_ack(self: aiosqlite.Connection) -> None:
            await commit(self)
            lose_ack()

        monkeypatch.setattr(aiosqlite.Connection, "commit", commit_then_lose_ack)
    return arm
