"""Stored first responses of non-streaming calls, so an `Idempotency-Key` replay returns them unchanged."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select

from downcity.errors import conflict
from downcity.store import Database
from downcity.store.database import now_ms
from downcity.store.schema import idempotent_responses


def request_hash(body: dict[str, Any]) -> str:
    """A stable digest of a request body, so a key reused for a different request is caught."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ReplayStore:
    """Reads and writes `idempotent_responses`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, key: str, user_id: str, body_hash: str) -> tuple[int, dict[str, Any]] | None:
        """The stored (status, body) for `key`; 409 when the key was used for another request."""
        async with self.db.connect() as conn:
            row = (
                await conn.execute(select(idempotent_responses).where(idempotent_responses.c.idempotency_key == key))
            ).first()
        if row is None:
            return None
        if row.user_id != user_id or row.request_hash != body_hash:
            raise conflict("Idempotency-Key was already used for a different request")
        return int(row.status_code), dict(row.body)

    async def put(self, key: str, user_id: str, body_hash: str, status: int, body: dict[str, Any]) -> None:
        """Store the first response for `key`; a concurrent duplicate keeps the first."""
        statement = (
            self.db.insert(idempotent_responses)
            .values(
                idempotency_key=key,
                user_id=user_id,
                request_hash=body_hash,
                status_code=status,
                body=body,
                created_at_ms=now_ms(),
            )
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )
        async with self.db.begin() as conn:
            await conn.execute(statement)
