"""Ed25519 signing keys for user tokens: private halves encrypted at rest, public halves cached."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from downcity.secrets import MasterKey
from downcity.settings import MAX_CLOCK_SKEW_S, MAX_TOKEN_TTL_S
from downcity.store import versions
from downcity.store.database import Database, now_ms
from downcity.store.schema import signing_keys

KEYS_VERSION = "keys"
ACTIVE = "active"
RETIRED = "retired"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aad(kid: str) -> bytes:
    return f"signing_key:{kid}".encode()


# A retired key signed its last token at retirement (give or take the skew), and that token expires at most
# MAX_TOKEN_TTL_S later: past then the key verifies nothing it could have signed.
RETIRED_KEY_LIFETIME_MS = (MAX_TOKEN_TTL_S + MAX_CLOCK_SKEW_S) * 1000


@dataclass(frozen=True)
class VerificationKey:
    """A public key, and when it was retired (None while active)."""

    kid: str
    x: str
    key: Ed25519PublicKey
    retired_at_ms: int | None

    def usable_at(self, ms: int) -> bool:
        """Whether a token it signed could still be unexpired at `ms`."""
        return self.retired_at_ms is None or ms < self.retired_at_ms + RETIRED_KEY_LIFETIME_MS


class KeyRing(versions.VersionedCache):
    """The active signing key plus the retired keys whose tokens may not have expired yet."""

    def __init__(self, db: Database, master_key: MasterKey, *, clock: Callable[[], int] = now_ms) -> None:
        super().__init__(db, KEYS_VERSION)
        self._master_key = master_key
        self._clock = clock
        self._public: dict[str, VerificationKey] = {}
        self._signing: tuple[str, Ed25519PrivateKey] | None = None

    async def ensure_active(self) -> str:
        """The active key's kid, creating the first key when there is none."""
        async with self.db.connect() as conn:
            kid = await _active_kid(conn)
        if kid is None:
            async with self.db.begin() as conn:
                await versions.bump(conn, KEYS_VERSION)
                kid = await _active_kid(conn) or await self._insert_key(conn)
        await self.load()
        return kid

    async def rotate(self) -> str:
        """Make a new key active; the previous one is retired and verifies until its last token expires."""
        async with self.db.begin() as conn:
            await versions.bump(conn, KEYS_VERSION)
            await conn.execute(
                update(signing_keys)
                .where(signing_keys.c.status == ACTIVE)
                .values(status=RETIRED, retired_at_ms=now_ms())
            )
            kid = await self._insert_key(conn)
        await self.load()
        return kid

    async def _insert_key(self, conn: AsyncConnection) -> str:
        # Callers bump the version first: on PostgreSQL that upsert locks the counter row until
        # commit, so concurrent creators and rotators run one after another.
        kid = f"key_{os.urandom(8).hex()}"
        private = Ed25519PrivateKey.generate()
        await conn.execute(
            signing_keys.insert().values(
                kid=kid,
                private_key_enc=self._master_key.encrypt(private.private_bytes_raw(), aad=_aad(kid)),
                public_key=_b64(private.public_key().public_bytes_raw()),
                status=ACTIVE,
                created_at_ms=now_ms(),
                retired_at_ms=None,
            )
        )
        return kid

    async def _reload(self) -> None:
        stmt = select(signing_keys).order_by(
            (signing_keys.c.status == ACTIVE).desc(), signing_keys.c.created_at_ms.desc(), signing_keys.c.kid
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        public: dict[str, VerificationKey] = {}
        signing: tuple[str, Ed25519PrivateKey] | None = None
        for row in rows:
            key = Ed25519PublicKey.from_public_bytes(_unb64(row.public_key))
            retired_at_ms = row.retired_at_ms if row.status == RETIRED else None
            public[row.kid] = VerificationKey(row.kid, row.public_key, key, retired_at_ms)
            if row.status == ACTIVE and signing is None:
                raw = self._master_key.decrypt(row.private_key_enc, aad=_aad(row.kid))
                signing = (row.kid, Ed25519PrivateKey.from_private_bytes(raw))
        self._public, self._signing = public, signing

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        """The cached active key as `(kid, private key)`."""
        if self._signing is None:
            raise RuntimeError("no active signing key is loaded: call KeyRing.ensure_active first")
        return self._signing

    def public_key(self, kid: str) -> VerificationKey | None:
        """The cached verification key for `kid`: active, or retired recently enough to verify anything."""
        entry = self._public.get(kid)
        return entry if entry is not None and entry.usable_at(self._clock()) else None

    def jwks(self) -> dict[str, Any]:
        """Every usable verification key as an RFC 8037 JWK set, the active key first."""
        now = self._clock()
        return {
            "keys": [
                {"kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": k.kid, "alg": "EdDSA", "use": "sig"}
                for k in self._public.values()
                if k.usable_at(now)
            ]
        }


async def _active_kid(conn: AsyncConnection) -> str | None:
    stmt = select(signing_keys.c.kid).where(signing_keys.c.status == ACTIVE)
    kid = (await conn.execute(stmt.order_by(signing_keys.c.created_at_ms.desc()))).scalars().first()
    return str(kid) if kid is not None else None
