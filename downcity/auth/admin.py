"""The admin credential: only its SHA-256 hash is stored, and it is compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from sqlalchemy import select

from downcity.settings import Settings
from downcity.store.database import Database, now_ms
from downcity.store.schema import meta

ADMIN_KEY_META = "admin_key_sha256"
ADMIN_KEY_PREFIX = "dc_admin_"


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AdminCredential:
    """Checks presented admin keys against the stored hash."""

    def __init__(self, key_sha256: str) -> None:
        self._key_sha256 = key_sha256

    @staticmethod
    async def ensure(db: Database, settings: Settings) -> str | None:
        """Store the admin key hash; returns a generated key's plaintext the one time it is created."""
        if settings.admin_key:
            row = {"value": _sha256(settings.admin_key), "updated_at_ms": now_ms()}
            stmt = db.insert(meta).values(key=ADMIN_KEY_META, **row)
            async with db.begin() as conn:
                await conn.execute(stmt.on_conflict_do_update(index_elements=[meta.c.key], set_=row))
            return None
        key = ADMIN_KEY_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        stmt = db.insert(meta).values(key=ADMIN_KEY_META, value=_sha256(key), updated_at_ms=now_ms())
        async with db.begin() as conn:
            result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=[meta.c.key]))
        return key if result.rowcount == 1 else None

    @classmethod
    async def load(cls, db: Database) -> AdminCredential:
        """The stored credential; `ensure` must have run first."""
        async with db.connect() as conn:
            value = (await conn.execute(select(meta.c.value).where(meta.c.key == ADMIN_KEY_META))).scalar()
        if value is None:
            raise RuntimeError("no admin credential is stored: run AdminCredential.ensure first")
        return cls(value)

    def verify(self, presented: str) -> bool:
        """True when `presented` is the admin key."""
        if not isinstance(presented, str) or not presented:
            return False
        return hmac.compare_digest(_sha256(presented), self._key_sha256)
