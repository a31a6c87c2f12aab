"""Token revocation by token id, or by user (every token issued up to that moment)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from downcity.errors import invalid
from downcity.settings import MAX_CLOCK_SKEW_S, MAX_TOKEN_TTL_S
from downcity.store import versions
from downcity.store.database import Database, now_ms
from downcity.store.schema import revoked_tokens

REVOCATIONS_VERSION = "revocations"
MAX_JTI_CHARS = 64
MAX_USER_ID_CHARS = 200
MAX_CITY_ID_CHARS = 64


def _check_text(value: object, field: str, max_chars: int) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(f"{field} must be a non-empty string", field)
    if len(value) > max_chars:
        raise invalid(f"{field} must be at most {max_chars} characters", field)
    return value


class RevocationStore:
    """Records revocations; each one bumps the `revocations` version."""

    def __init__(self, db: Database, *, clock: Callable[[], int] = now_ms) -> None:
        self.db = db
        self._clock = clock

    async def revoke_token(self, jti: str) -> int:
        """Revoke one token by its id (`token_id`); returns 1, or 0 when it was already revoked."""
        jti = _check_text(jti, "token_id", MAX_JTI_CHARS)
        stmt = self.db.insert(revoked_tokens).values(jti=jti, revoked_at_ms=self._clock())
        async with self.db.begin() as conn:
            result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=[revoked_tokens.c.jti]))
            if result.rowcount == 0:
                return 0
            await versions.bump(conn, REVOCATIONS_VERSION)
        return 1

    async def revoke_user(self, user_id: str, city_id: str | None = None) -> int:
        """Revoke every token the user was issued up to now, in one city or all; returns 1 (recorded)."""
        user_id = _check_text(user_id, "user_id", MAX_USER_ID_CHARS)
        if city_id is not None:
            city_id = _check_text(city_id, "city_id", MAX_CITY_ID_CHARS)
        stmt = revoked_tokens.insert().values(user_id=user_id, city_id=city_id, revoked_at_ms=self._clock())
        async with self.db.begin() as conn:
            await conn.execute(stmt)
            await versions.bump(conn, REVOCATIONS_VERSION)
        return 1


class RevocationCache(versions.VersionedCache):
    """Revocations in memory, so token verification never waits on the database."""

    def __init__(self, store: RevocationStore, *, clock: Callable[[], int] = now_ms) -> None:
        super().__init__(store.db, REVOCATIONS_VERSION)
        self._clock = clock
        self._jtis: frozenset[str] = frozenset()
        self._user_cutoffs: dict[tuple[str | None, str], int] = {}

    async def _reload(self) -> None:
        # The verifier accepts only tokens with `exp - iat` <= MAX_TOKEN_TTL_S and `iat` at most the skew
        # ahead, so a revocation older than that can only match tokens that have already expired.
        since_ms = self._clock() - (MAX_TOKEN_TTL_S + MAX_CLOCK_SKEW_S) * 1000
        stmt = select(
            revoked_tokens.c.jti,
            revoked_tokens.c.city_id,
            revoked_tokens.c.user_id,
            revoked_tokens.c.revoked_at_ms,
        ).where(revoked_tokens.c.revoked_at_ms >= since_ms)
        async with self.db.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        jtis: set[str] = set()
        cutoffs: dict[tuple[str | None, str], int] = {}
        for row in rows:
            if row.jti is not None:
                jtis.add(row.jti)
            elif row.user_id is not None:
                scope = (row.city_id, row.user_id)
                cutoffs[scope] = max(cutoffs.get(scope, 0), row.revoked_at_ms)
        self._jtis, self._user_cutoffs = frozenset(jtis), cutoffs

    def is_revoked(self, jti: str, city_id: str, user_id: str, iat_ms: int) -> bool:
        """True when the token id is revoked, or its user was revoked at or after it was issued."""
        if jti in self._jtis:
            return True
        cutoffs = self._user_cutoffs
        if not cutoffs:
            return False
        cutoff = max(cutoffs.get((city_id, user_id), -1), cutoffs.get((None, user_id), -1))
        return iat_ms <= cutoff
