"""Idempotency claims: an `Idempotency-Key` is claimed before any work and bound to one request.

A key is scoped to (city, user, pathway) and stored as a sha256 of that scope, so it has a fixed width whatever
the client sends. The first call inserts the claim `in_flight`, owned by its request id and leased until
`expires_at_ms` (renewed while the call runs). Then:

- a duplicate with another body gets 409 `idempotency_conflict`, before any work;
- a duplicate while the owner is in flight gets 409 `idempotency_in_flight` (it never reaches the upstream);
- once the owner completes, a replay gets the stored answer (JSON, or a stream's exact bytes);
- an owner that fails before any content reached the client abandons the claim, so a retry runs afresh;
- an owner whose lease ran out (its replica died) is taken over, unless it already ended with a charge and
  no stored answer: that replay gets 409 `idempotency_result_unavailable` rather than a second charge.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update

from downcity.errors import DowncityHTTPError, conflict
from downcity.store import Database
from downcity.store.database import now_ms
from downcity.store.schema import idempotency_claims, usage_records
from downcity.store.values import check_json

IN_FLIGHT = "in_flight"
UNSTORABLE = "unstorable"
DONE = "done"
# The longest a client key may be; it is hashed, so this bounds only what a client may send.
MAX_KEY_LENGTH = 255


def request_hash(body: dict[str, Any]) -> str:
    """A stable digest of a request body, so a key reused for a different request is caught."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_client_key(value: str | None) -> str | None:
    """The client's `Idempotency-Key`: 1 to 255 visible ASCII characters, else 400 naming the header."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_KEY_LENGTH or not all(33 <= ord(char) <= 126 for char in value):
        raise DowncityHTTPError(
            400,
            "bad_request",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters",
            "Idempotency-Key",
        )
    return value


def key_hash(city_id: str, user_id: str, pathway: str, client_key: str) -> str:
    """The stored, fixed-width form of a client key in its scope."""
    return hashlib.sha256(f"{city_id}\0{user_id}\0{pathway}\0{client_key}".encode()).hexdigest()


@dataclass(frozen=True)
class Replay:
    """The stored answer of a completed call."""

    status_code: int
    body: dict[str, Any]


@dataclass(frozen=True)
class ClaimScope:
    """Who claims which key for which request."""

    city_id: str
    user_id: str
    pathway: str
    client_key: str
    request_hash: str

    @property
    def key_hash(self) -> str:
        """The stored key."""
        return key_hash(self.city_id, self.user_id, self.pathway, self.client_key)


def _in_flight(expires_at_ms: int, now: int) -> DowncityHTTPError:
    retry_after = max(1, math.ceil((expires_at_ms - now) / 1000))
    return DowncityHTTPError(
        409,
        "idempotency_in_flight",
        f"a request with this Idempotency-Key is still running; retry in up to {retry_after} s",
        "Idempotency-Key",
    )


def _unavailable() -> DowncityHTTPError:
    return DowncityHTTPError(
        409,
        "idempotency_result_unavailable",
        "the request with this Idempotency-Key completed but its answer could not be stored",
        "Idempotency-Key",
    )


class ClaimStore:
    """Reads and conditional writes of `idempotency_claims`; each is one atomic statement."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, scope: ClaimScope, owner: str, lease_ms: int) -> Replay | None:
        """Claim the key for `owner`: None when the caller now owns it, the stored answer for a replay, else 409."""
        now = now_ms()
        row = {
            "key_hash": scope.key_hash,
            "city_id": scope.city_id,
            "user_id": scope.user_id,
            "pathway": scope.pathway,
            "request_hash": scope.request_hash,
            "owner": owner,
            "state": IN_FLIGHT,
            "expires_at_ms": now + lease_ms,
            "created_at_ms": now,
            "updated_at_ms": now,
        }
        async with self.db.begin() as conn:
            inserted = await conn.execute(self.db.insert(idempotency_claims).values(row).on_conflict_do_nothing())
        if inserted.rowcount == 1:
            return None
        async with self.db.connect() as conn:
            existing = (
                await conn.execute(select(idempotency_claims).where(idempotency_claims.c.key_hash == scope.key_hash))
            ).first()
        if existing is None:
            # Abandoned between our insert and our read: claim it afresh.
            return await self.claim(scope, owner, lease_ms)
        if existing.request_hash != scope.request_hash:
            raise conflict("Idempotency-Key was already used for a different request")
        if existing.state == DONE:
            if existing.body.get(UNSTORABLE):
                raise _unavailable()
            return Replay(int(existing.status_code), dict(existing.body))
        if existing.expires_at_ms > now:
            raise _in_flight(existing.expires_at_ms, now)
        return await self._take_over(scope, existing.owner, owner, now + lease_ms)

    async def _take_over(self, scope: ClaimScope, previous: str, owner: str, until_ms: int) -> Replay | None:
        """Claim a key whose owner stopped renewing it; refuse when that owner already charged the call."""
        async with self.db.connect() as conn:
            ended = (
                await conn.execute(
                    select(usage_records.c.status, usage_records.c.charge_microcredits).where(
                        usage_records.c.request_id == previous
                    )
                )
            ).first()
        if ended is not None and (ended.status == "ok" or ended.charge_microcredits > 0):
            raise _unavailable()
        statement = (
            update(idempotency_claims)
            .where(
                idempotency_claims.c.key_hash == scope.key_hash,
                idempotency_claims.c.owner == previous,
                idempotency_claims.c.state == IN_FLIGHT,
            )
            .values(owner=owner, expires_at_ms=until_ms, updated_at_ms=now_ms())
        )
        async with self.db.begin() as conn:
            taken = await conn.execute(statement)
        if taken.rowcount == 1:
            return None
        # Another caller took it over or the owner finished meanwhile: decide again from what is stored now.
        return await self.claim(scope, owner, until_ms - now_ms())

    async def complete(self, key: str, owner: str, status_code: int, body: dict[str, Any]) -> None:
        """Store the owner's answer; replays return it from now on (or, if no database can hold it, 409)."""
        try:
            check_json(body)
        except DowncityHTTPError:
            # An upstream answer with NUL or a lone surrogate was already delivered and paid for; it cannot be
            # stored, so its replays get `idempotency_result_unavailable` instead of a second charge.
            body = {UNSTORABLE: True}
        statement = (
            update(idempotency_claims)
            .where(idempotency_claims.c.key_hash == key, idempotency_claims.c.owner == owner)
            .values(state=DONE, status_code=status_code, body=body, updated_at_ms=now_ms())
        )
        async with self.db.begin() as conn:
            await conn.execute(statement)

    async def abandon(self, key: str, owner: str) -> None:
        """Free the key of an owner that failed before any content reached the client."""
        statement = delete(idempotency_claims).where(
            idempotency_claims.c.key_hash == key,
            idempotency_claims.c.owner == owner,
            idempotency_claims.c.state == IN_FLIGHT,
        )
        async with self.db.begin() as conn:
            await conn.execute(statement)

    async def renew(self, key: str, owner: str, lease_ms: int) -> bool:
        """Extend the owner's lease; False when the owner no longer holds the key."""
        statement = (
            update(idempotency_claims)
            .where(
                idempotency_claims.c.key_hash == key,
                idempotency_claims.c.owner == owner,
                idempotency_claims.c.state == IN_FLIGHT,
            )
            .values(expires_at_ms=now_ms() + lease_ms, updated_at_ms=now_ms())
        )
        async with self.db.begin() as conn:
            renewed = await conn.execute(statement)
        return bool(renewed.rowcount == 1)
