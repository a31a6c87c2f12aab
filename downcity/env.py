"""Provider keys: encrypted at rest in the `env` table, read by providers through one cache."""

from __future__ import annotations

import builtins
import os
import re

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select

from downcity.errors import invalid
from downcity.secrets import MasterKey
from downcity.store import versions
from downcity.store.database import Database, now_ms
from downcity.store.schema import env

ENV_VERSION = "env"
KEY_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")
MAX_VALUE_CHARS = 16 * 1024
_PREVIEW_MIN_CHARS = 10


class EnvEntry(BaseModel):
    """One stored variable as shown to admins: its name and a preview, never the value."""

    model_config = ConfigDict(frozen=True)

    key: str
    preview: str
    updated_at_ms: int


def preview(value: str) -> str:
    """`sk-a…9f`: the first 4 and last 2 characters, or only `…` for values under 10 characters."""
    if len(value) < _PREVIEW_MIN_CHARS:
        return "…"
    return f"{value[:4]}…{value[-2:]}"


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise invalid("key must match ^[A-Z][A-Z0-9_]{0,127}$, like OPENAI_API_KEY", "key")
    return key


def _check_value(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise invalid("value must be a non-empty string", "value")
    if len(value) > MAX_VALUE_CHARS:
        raise invalid(f"value must be at most {MAX_VALUE_CHARS} characters", "value")
    return value


def _aad(key: str) -> bytes:
    return f"env:{key}".encode()


class EnvStore:
    """Admin operations on stored provider keys; the table holds ciphertext and previews only."""

    def __init__(self, db: Database, master_key: MasterKey) -> None:
        self.db = db
        self._master_key = master_key

    async def set(self, key: str, value: str) -> EnvEntry:
        """Store or replace `key`."""
        key, value = _check_key(key), _check_value(value)
        entry = EnvEntry(key=key, preview=preview(value), updated_at_ms=now_ms())
        row = {
            "value_enc": self._master_key.encrypt(value.encode(), aad=_aad(key)),
            "preview": entry.preview,
            "updated_at_ms": entry.updated_at_ms,
        }
        stmt = self.db.insert(env).values(key=key, **row)
        async with self.db.begin() as conn:
            await conn.execute(stmt.on_conflict_do_update(index_elements=[env.c.key], set_=row))
            await versions.bump(conn, ENV_VERSION)
        return entry

    async def remove(self, key: str) -> bool:
        """Delete `key`; True when it existed."""
        key = _check_key(key)
        async with self.db.begin() as conn:
            result = await conn.execute(delete(env).where(env.c.key == key))
            if result.rowcount == 0:
                return False
            await versions.bump(conn, ENV_VERSION)
        return True

    async def load_all(self) -> dict[str, str]:
        """Every stored key with its decrypted value."""
        async with self.db.connect() as conn:
            rows = (await conn.execute(select(env.c.key, env.c.value_enc))).all()
        return {row.key: self._master_key.decrypt(row.value_enc, aad=_aad(row.key)).decode() for row in rows}

    async def list(self) -> builtins.list[EnvEntry]:
        """Every stored key with its preview, sorted by key."""
        stmt = select(env.c.key, env.c.preview, env.c.updated_at_ms).order_by(env.c.key)
        async with self.db.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [EnvEntry(key=r.key, preview=r.preview, updated_at_ms=r.updated_at_ms) for r in rows]


class EnvCache(versions.VersionedCache):
    """The one accessor providers read keys through: stored values win over `os.environ`."""

    def __init__(self, store: EnvStore) -> None:
        super().__init__(store.db, ENV_VERSION)
        self._store = store
        self._values: dict[str, str] = {}

    async def _reload(self) -> None:
        self._values = await self._store.load_all()

    def get(self, key: str) -> str | None:
        """The stored value of `key`, else the process environment's, else None."""
        stored = self._values.get(key)
        return stored if stored is not None else os.environ.get(key)

    def stored_values(self) -> list[str]:
        """Every stored value, declared by a provider or not: what error and log scrubbing must hide."""
        return list(self._values.values())
