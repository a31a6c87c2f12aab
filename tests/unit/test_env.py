"""Provider keys: encrypted at rest, listed as previews, read through EnvCache; and the version counters."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, update

from downcity.env import EnvCache, EnvEntry, EnvStore, preview
from downcity.errors import DowncityHTTPError
from downcity.secrets import DecryptionError, MasterKey
from downcity.store import Database, versions
from downcity.store.schema import env

SECRET = "sk-abcdefghijklmnop-9f"


@pytest.fixture
def store(db: Database) -> EnvStore:
    return EnvStore(db, MasterKey.generate())


async def _env_version(db: Database) -> int:
    async with db.connect() as conn:
        return await versions.read(conn, "env")


async def test_version_is_zero_before_any_bump(db: Database) -> None:
    async with db.connect() as conn:
        assert await versions.read(conn, "anything") == 0


async def test_bump_returns_each_new_value(db: Database) -> None:
    async with db.begin() as conn:
        assert [await versions.bump(conn, "x") for _ in range(3)] == [1, 2, 3]
    async with db.connect() as conn:
        assert await versions.read(conn, "x") == 3


async def test_concurrent_bumps_never_lose_an_increment(db: Database) -> None:
    async def one_bump() -> int:
        async with db.begin() as conn:
            return await versions.bump(conn, "race")

    results = await asyncio.gather(*(one_bump() for _ in range(20)))
    assert sorted(results) == list(range(1, 21))


async def test_set_then_load_all_returns_the_value(store: EnvStore) -> None:
    await store.set("OPENAI_API_KEY", SECRET)
    assert await store.load_all() == {"OPENAI_API_KEY": SECRET}


async def test_raw_table_holds_no_plaintext(db: Database, store: EnvStore) -> None:
    await store.set("OPENAI_API_KEY", SECRET)
    async with db.connect() as conn:
        row = (await conn.execute(select(env))).one()
    raw = b"".join(str(v).encode() if not isinstance(v, bytes) else v for v in row)
    assert SECRET.encode() not in raw


async def test_a_ciphertext_moved_to_another_row_does_not_decrypt(db: Database, store: EnvStore) -> None:
    await store.set("KEY_A", "value-of-key-a")
    await store.set("KEY_B", "value-of-key-b")
    async with db.begin() as conn:
        blob = (await conn.execute(select(env.c.value_enc).where(env.c.key == "KEY_A"))).scalar_one()
        await conn.execute(update(env).where(env.c.key == "KEY_B").values(value_enc=blob))
    with pytest.raises(DecryptionError):
        await store.load_all()


async def test_set_replaces_an_existing_value(store: EnvStore) -> None:
    await store.set("OPENAI_API_KEY", "first-value-123")
    await store.set("OPENAI_API_KEY", "second-value-456")
    assert await store.load_all() == {"OPENAI_API_KEY": "second-value-456"}


async def test_list_shows_previews_sorted_by_key_and_never_values(store: EnvStore) -> None:
    await store.set("Z_KEY", "sk-abcdefgh9f")
    await store.set("A_KEY", "short")
    entries = await store.list()
    assert [(e.key, e.preview) for e in entries] == [("A_KEY", "…"), ("Z_KEY", "sk-a…9f")]
    assert all(isinstance(e, EnvEntry) and e.updated_at_ms > 0 for e in entries)


@pytest.mark.parametrize(
    ("value", "expected"), [("123456789", "…"), ("1234567890", "1234…90"), ("sk-abcdefgh9f", "sk-a…9f")]
)
def test_preview_shows_four_and_two_characters_from_ten_up(value: str, expected: str) -> None:
    assert preview(value) == expected


async def test_remove_reports_whether_the_key_existed(store: EnvStore) -> None:
    await store.set("OPENAI_API_KEY", SECRET)
    assert await store.remove("OPENAI_API_KEY") is True
    assert await store.remove("OPENAI_API_KEY") is False
    assert await store.load_all() == {}


@pytest.mark.parametrize("key", ["", "lower_case", "1STARTS_WITH_DIGIT", "HAS-DASH", "A" * 129])
async def test_invalid_key_is_refused_naming_key(store: EnvStore, key: str) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await store.set(key, SECRET)
    assert (caught.value.status, caught.value.field) == (422, "key")


async def test_empty_value_is_refused_naming_value(store: EnvStore) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await store.set("OPENAI_API_KEY", "")
    assert (caught.value.status, caught.value.field) == (422, "value")


async def test_refused_value_does_not_appear_in_the_error(store: EnvStore) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await store.set("bad key", SECRET)
    assert SECRET not in str(caught.value.to_body())


async def test_set_and_remove_bump_the_env_version(db: Database, store: EnvStore) -> None:
    await store.set("OPENAI_API_KEY", SECRET)
    await store.remove("OPENAI_API_KEY")
    assert await _env_version(db) == 2


async def test_cache_sees_a_rotated_key_after_refresh(store: EnvStore) -> None:
    cache = EnvCache(store)
    await store.set("OPENAI_API_KEY", "old-key-value-1")
    assert await cache.refresh() is True
    assert cache.get("OPENAI_API_KEY") == "old-key-value-1"
    await store.set("OPENAI_API_KEY", "new-key-value-2")
    assert cache.get("OPENAI_API_KEY") == "old-key-value-1"
    assert await cache.refresh() is True
    assert cache.get("OPENAI_API_KEY") == "new-key-value-2"


async def test_cache_refresh_without_a_change_does_not_reload(store: EnvStore) -> None:
    cache = EnvCache(store)
    await cache.refresh()
    assert await cache.refresh() is False


async def test_cache_falls_back_to_the_process_environment(store: EnvStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_PROCESS_KEY", "process-value")
    cache = EnvCache(store)
    await cache.refresh()
    assert cache.get("FROM_PROCESS_KEY") == "process-value"
    assert cache.get("NOWHERE_KEY_XYZ") is None


async def test_cache_prefers_the_stored_value_over_the_environment(
    store: EnvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "process-value")
    await store.set("OPENAI_API_KEY", "stored-value-1")
    cache = EnvCache(store)
    await cache.refresh()
    assert cache.get("OPENAI_API_KEY") == "stored-value-1"


async def test_started_cache_picks_up_changes_in_the_background(store: EnvStore) -> None:
    cache = EnvCache(store)
    await cache.start(interval_s=0.01)
    try:
        await store.set("OPENAI_API_KEY", "background-value")
        for _ in range(500):
            if cache.get("OPENAI_API_KEY") is not None:
                break
            await asyncio.sleep(0.01)
        assert cache.get("OPENAI_API_KEY") == "background-value"
    finally:
        await cache.stop()
