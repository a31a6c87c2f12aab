"""The signing key ring: Ed25519 keys encrypted at rest, rotation, and the JWKS document."""

from __future__ import annotations

import asyncio
import base64

import pytest
from sqlalchemy import select

from downcity.auth import KeyRing
from downcity.auth.keyring import RETIRED_KEY_LIFETIME_MS
from downcity.secrets import MasterKey
from downcity.store import Database, versions
from downcity.store.database import now_ms
from downcity.store.schema import signing_keys


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def keyring(db: Database, master_key: MasterKey) -> KeyRing:
    return KeyRing(db, master_key)


async def test_ensure_active_creates_one_key_and_then_reuses_it(db: Database, keyring: KeyRing) -> None:
    kid = await keyring.ensure_active()
    assert await keyring.ensure_active() == kid
    async with db.connect() as conn:
        rows = (await conn.execute(select(signing_keys.c.kid, signing_keys.c.status))).all()
    assert [tuple(r) for r in rows] == [(kid, "active")]


async def test_signing_key_matches_the_published_public_key(keyring: KeyRing) -> None:
    kid = await keyring.ensure_active()
    signing_kid, private = keyring.signing_key()
    public = keyring.public_key(kid)
    assert signing_kid == kid
    assert public is not None
    public.key.verify(private.sign(b"message"), b"message")


async def test_private_key_is_stored_encrypted(db: Database, keyring: KeyRing) -> None:
    await keyring.ensure_active()
    _, private = keyring.signing_key()
    async with db.connect() as conn:
        stored = (await conn.execute(select(signing_keys.c.private_key_enc))).scalar_one()
    assert private.private_bytes_raw() not in stored


async def test_jwks_is_rfc_8037(keyring: KeyRing) -> None:
    kid = await keyring.ensure_active()
    _, private = keyring.signing_key()
    x = base64.urlsafe_b64encode(private.public_key().public_bytes_raw()).decode().rstrip("=")
    assert keyring.jwks() == {
        "keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}]
    }


async def test_rotate_activates_a_new_key_and_retires_the_old(db: Database, keyring: KeyRing) -> None:
    old = await keyring.ensure_active()
    new = await keyring.rotate()
    assert new != old
    assert keyring.signing_key()[0] == new
    async with db.connect() as conn:
        rows = (await conn.execute(select(signing_keys.c.kid, signing_keys.c.status))).all()
    assert sorted(tuple(r) for r in rows) == sorted([(old, "retired"), (new, "active")])


async def test_a_retired_key_still_verifies(keyring: KeyRing) -> None:
    old = await keyring.ensure_active()
    _, old_private = keyring.signing_key()
    await keyring.rotate()
    public = keyring.public_key(old)
    assert public is not None
    public.key.verify(old_private.sign(b"message"), b"message")
    assert [k["kid"] for k in keyring.jwks()["keys"]][1] == old


async def test_another_instance_sees_a_rotation_after_refresh(
    db: Database, keyring: KeyRing, master_key: MasterKey
) -> None:
    await keyring.ensure_active()
    other = KeyRing(db, master_key)
    await other.refresh()
    new = await keyring.rotate()
    assert other.public_key(new) is None
    assert await other.refresh() is True
    assert other.signing_key()[0] == new
    assert other.public_key(new) is not None


async def test_concurrent_ensure_active_creates_a_single_key(db: Database, master_key: MasterKey) -> None:
    rings = [KeyRing(db, master_key) for _ in range(4)]
    kids = await asyncio.gather(*(ring.ensure_active() for ring in rings))
    async with db.connect() as conn:
        stored = list((await conn.execute(select(signing_keys.c.kid))).scalars())
    assert stored == [kids[0]]
    assert set(kids) == {kids[0]}


async def test_changes_bump_the_keys_version(db: Database, keyring: KeyRing) -> None:
    await keyring.ensure_active()
    await keyring.ensure_active()
    await keyring.rotate()
    async with db.connect() as conn:
        assert await versions.read(conn, "keys") == 2


async def test_unknown_kid_has_no_public_key(keyring: KeyRing) -> None:
    await keyring.ensure_active()
    assert keyring.public_key("key_unknown") is None


async def test_signing_key_before_loading_is_an_error(keyring: KeyRing) -> None:
    with pytest.raises(RuntimeError, match="ensure_active"):
        keyring.signing_key()


class Clock:
    """A settable clock in epoch milliseconds."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


async def test_a_retired_key_stops_verifying_once_every_token_it_signed_has_expired(
    db: Database, master_key: MasterKey
) -> None:
    clock = Clock(now_ms())
    keyring = KeyRing(db, master_key, clock=clock)
    old = await keyring.ensure_active()
    await keyring.rotate()
    async with db.connect() as conn:
        retired_at_ms = (
            await conn.execute(select(signing_keys.c.retired_at_ms).where(signing_keys.c.kid == old))
        ).scalar_one()

    clock.ms = retired_at_ms + RETIRED_KEY_LIFETIME_MS - 1
    still = keyring.public_key(old)
    in_jwks = [k["kid"] for k in keyring.jwks()["keys"]]
    clock.ms += 1

    assert still is not None and still.retired_at_ms == retired_at_ms
    assert old in in_jwks
    assert keyring.public_key(old) is None
    assert old not in [k["kid"] for k in keyring.jwks()["keys"]]
