"""The admin credential: generated and shown once, or taken from the environment; only a hash is stored."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from downcity.auth import AdminCredential
from downcity.settings import Settings
from downcity.store import Database
from downcity.store.schema import meta


async def _stored_values(db: Database) -> list[str]:
    async with db.connect() as conn:
        return list((await conn.execute(select(meta.c.value))).scalars())


async def test_a_generated_key_is_returned_once(db: Database, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    key = await AdminCredential.ensure(db, settings)
    assert key is not None
    assert re.fullmatch(r"dc_admin_[A-Za-z0-9_-]{43}", key)
    assert await AdminCredential.ensure(db, settings) is None


async def test_a_generated_key_verifies(db: Database, tmp_path: Path) -> None:
    key = await AdminCredential.ensure(db, Settings(data_dir=tmp_path))
    assert key is not None
    credential = await AdminCredential.load(db)
    assert credential.verify(key) is True


async def test_only_the_hash_of_a_generated_key_is_stored(db: Database, tmp_path: Path) -> None:
    key = await AdminCredential.ensure(db, Settings(data_dir=tmp_path))
    assert key is not None
    assert await _stored_values(db) == [hashlib.sha256(key.encode()).hexdigest()]


async def test_an_env_provided_key_verifies_and_nothing_is_returned(db: Database, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, admin_key="operator-chosen-key")
    assert await AdminCredential.ensure(db, settings) is None
    assert (await AdminCredential.load(db)).verify("operator-chosen-key") is True


async def test_an_env_provided_key_replaces_a_generated_one(db: Database, tmp_path: Path) -> None:
    generated = await AdminCredential.ensure(db, Settings(data_dir=tmp_path))
    assert generated is not None
    await AdminCredential.ensure(db, Settings(data_dir=tmp_path, admin_key="operator-chosen-key"))
    credential = await AdminCredential.load(db)
    assert (credential.verify("operator-chosen-key"), credential.verify(generated)) == (True, False)


@pytest.mark.parametrize("presented", ["wrong-key", "", "operator-chosen-ke", "operator-chosen-key "])
async def test_a_wrong_key_fails(db: Database, tmp_path: Path, presented: str) -> None:
    await AdminCredential.ensure(db, Settings(data_dir=tmp_path, admin_key="operator-chosen-key"))
    assert (await AdminCredential.load(db)).verify(presented) is False


async def test_load_before_ensure_is_an_error(db: Database) -> None:
    with pytest.raises(RuntimeError, match="ensure"):
        await AdminCredential.load(db)
