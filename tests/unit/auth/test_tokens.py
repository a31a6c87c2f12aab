"""User tokens: issuance rules, local verification, expiry, tampering, rotation and revocation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import downcity.auth
from downcity.auth import KeyRing, RevocationCache, RevocationStore, TokenIssuer, TokenVerifier
from downcity.cities import CityStore
from downcity.errors import DowncityHTTPError
from downcity.secrets import MasterKey
from downcity.settings import DEFAULT_TOKEN_TTL_S, MAX_CLOCK_SKEW_S, MAX_TOKEN_TTL_S
from downcity.store import Database
from downcity.store.database import now_ms

CITY = "web-app"
DAY_MS = 24 * 3600 * 1000


class Clock:
    """A settable clock in epoch milliseconds."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@dataclass
class Auth:
    cities: CityStore
    keyring: KeyRing
    revocations: RevocationStore
    revocation_cache: RevocationCache
    issuer: TokenIssuer
    verifier: TokenVerifier

    def issuer_at(self, clock: Clock) -> TokenIssuer:
        return TokenIssuer(self.keyring, self.cities, clock=clock)


@pytest.fixture
async def auth(db: Database) -> Auth:
    cities = CityStore(db)
    await cities.create("Web app", city_id=CITY)
    keyring = KeyRing(db, MasterKey.generate())
    await keyring.ensure_active()
    revocations = RevocationStore(db)
    cache = RevocationCache(revocations)
    await cache.load()
    return Auth(
        cities=cities,
        keyring=keyring,
        revocations=revocations,
        revocation_cache=cache,
        issuer=TokenIssuer(keyring, cities),
        verifier=TokenVerifier(keyring, cache),
    )


@pytest.fixture
async def offline_db() -> AsyncIterator[Database]:
    """An unmigrated database: input checks must refuse before touching storage."""
    db = Database("sqlite+aiosqlite:///:memory:")
    yield db
    await db.dispose()


@pytest.fixture
def offline_issuer(offline_db: Database) -> TokenIssuer:
    return TokenIssuer(KeyRing(offline_db, MasterKey.generate()), CityStore(offline_db))


@pytest.fixture
def offline_revocations(offline_db: Database) -> RevocationStore:
    return RevocationStore(offline_db)


def _error(exc: pytest.ExceptionInfo[DowncityHTTPError]) -> tuple[int, str, str | None]:
    return exc.value.status, exc.value.type, exc.value.field


def _flip_char(token: str, part: int) -> str:
    segments = token.split(".")
    segment = segments[part]
    middle = len(segment) // 2
    replacement = "A" if segment[middle] != "A" else "B"
    segments[part] = segment[:middle] + replacement + segment[middle + 1 :]
    return ".".join(segments)


def _sign(payload: dict[str, Any], key: Ed25519PrivateKey, kid: str) -> str:
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": kid})


def _valid_payload() -> dict[str, Any]:
    issued = now_ms()
    return {
        "iss": "downcity",
        "city_id": CITY,
        "user_id": "u1",
        "metadata": {},
        "jti": "jti-1",
        "iat": issued / 1000,
        "exp": issued // 1000 + 3600,
    }


def test_auth_package_exports_its_public_api() -> None:
    assert downcity.auth.__all__ == [
        "AdminCredential",
        "Caller",
        "IssuedToken",
        "KeyRing",
        "RevocationCache",
        "RevocationStore",
        "TokenIssuer",
        "TokenVerifier",
        "UserClaims",
    ]


async def test_issued_token_verifies_with_its_claims_and_metadata(auth: Auth) -> None:
    metadata = {"plan": "pro", "team_id": "t-9", "flags": ["beta"], "seats": 3}
    issued = await auth.issuer.apply(CITY, "user-1", metadata=metadata)
    claims = auth.verifier.verify(issued.user_token)
    assert (claims.city_id, claims.user_id, claims.metadata, claims.jti) == (
        CITY,
        "user-1",
        metadata,
        issued.token_id,
    )
    assert (issued.city_id, issued.user_id) == (CITY, "user-1")


async def test_token_carries_issuer_kid_and_default_ttl(auth: Auth) -> None:
    clock = Clock(1714564800123)
    issued = await auth.issuer_at(clock).apply(CITY, "user-1")
    header = jwt.get_unverified_header(issued.user_token)
    payload = jwt.decode(issued.user_token, options={"verify_signature": False})
    assert header["kid"] == auth.keyring.signing_key()[0]
    assert (header["alg"], payload["iss"]) == ("EdDSA", "downcity")
    assert (payload["iat"], payload["exp"]) == (1714564800.123, 1714564800 + DEFAULT_TOKEN_TTL_S)
    assert issued.expires_at == "2024-05-08T12:00:00.000Z"


async def test_custom_ttl_sets_the_expiry(auth: Auth) -> None:
    issued = await auth.issuer_at(Clock(1714564800000)).apply(CITY, "user-1", ttl=60)
    assert issued.expires_at == "2024-05-01T12:01:00.000Z"


async def test_expired_token_is_refused(auth: Auth) -> None:
    issued = await auth.issuer_at(Clock(now_ms() - 8 * DAY_MS)).apply(CITY, "user-1")
    with pytest.raises(DowncityHTTPError) as caught:
        auth.verifier.verify(issued.user_token)
    assert _error(caught) == (401, "token_expired", None)


async def test_a_cached_token_is_refused_once_it_expires(auth: Auth) -> None:
    clock = Clock(now_ms())
    verifier = TokenVerifier(auth.keyring, auth.revocation_cache, clock=clock)
    issued = await auth.issuer_at(clock).apply(CITY, "user-1", ttl=60)
    assert verifier.verify(issued.user_token).user_id == "user-1"
    clock.ms += 60_000
    with pytest.raises(DowncityHTTPError) as caught:
        verifier.verify(issued.user_token)
    assert _error(caught) == (401, "token_expired", None)


@pytest.mark.parametrize("part", [1, 2], ids=["payload", "signature"])
async def test_tampered_token_is_refused(auth: Auth, part: int) -> None:
    issued = await auth.issuer.apply(CITY, "user-1")
    auth.verifier.verify(issued.user_token)
    with pytest.raises(DowncityHTTPError) as caught:
        auth.verifier.verify(_flip_char(issued.user_token, part))
    assert _error(caught) == (401, "token_invalid", None)


@pytest.mark.parametrize(
    "token", ["", "not-a-jwt", "a.b.c", "eyJhbGciOiJFZERTQSJ9.e30.AAAA", "a" * 20000], ids=str.__len__
)
async def test_malformed_token_is_refused(auth: Auth, token: str) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        auth.verifier.verify(token)
    assert _error(caught) == (401, "token_invalid", None)


async def test_token_with_an_unknown_kid_is_refused(auth: Auth) -> None:
    token = _sign(_valid_payload(), Ed25519PrivateKey.generate(), "key_unknown")
    with pytest.raises(DowncityHTTPError) as caught:
        auth.verifier.verify(token)
    assert _error(caught) == (401, "token_invalid", None)


async def test_token_signed_by_another_key_under_a_known_kid_is_refused(auth: Auth) -> None:
    token = _sign(_valid_payload(), Ed25519PrivateKey.generate(), auth.keyring.signing_key()[0])
    with pytest.raises(DowncityHTTPError) as caught:
        auth.verifier.verify(token)
    assert _error(caught) == (401, "token_invalid", None)


async def test_a_validly_signed_token_with_the_expected_claims_verifies(auth: Auth) -> None:
    kid, key = auth.keyring.signing_key()
    assert auth.verifier.verify(_sign(_valid_payload(), key, kid)).jti == "jti-1"


@pytest.mark.parametrize("claim", ["iss", "city_id", "user_id", "metadata", "jti", "iat", "exp"])
async def test_token_missing_a_claim_is_refused(auth: Auth, claim: str) -> None:
    kid, key = auth.keyring.signing_key()
    payload = _valid_payload()
    del payload[claim]
    with pytest.raises(DowncityHTTPError) as caught:
        auth.verifier.verify(_sign(payload, key, kid))
    assert _error(caught) == (401, "token_invalid", None)


async def test_token_from_another_issuer_is_refused(auth: Auth) -> None:
    kid, key = auth.keyring.signing_key()
    with pytest.raises(DowncityHTTPError) as caught:
        auth.verifier.verify(_sign({**_valid_payload(), "iss": "elsewhere"}, key, kid))
    assert _error(caught) == (401, "token_invalid", None)


async def test_after_rotation_old_tokens_verify_and_new_ones_carry_the_new_kid(auth: Auth) -> None:
    old_kid = auth.keyring.signing_key()[0]
    before = await auth.issuer.apply(CITY, "user-1")
    new_kid = await auth.keyring.rotate()
    after = await auth.issuer.apply(CITY, "user-1")
    assert auth.verifier.verify(before.user_token).jti == before.token_id
    assert auth.verifier.verify(after.user_token).jti == after.token_id
    assert jwt.get_unverified_header(before.user_token)["kid"] == old_kid
    assert jwt.get_unverified_header(after.user_token)["kid"] == new_kid


async def test_revoking_a_token_id_refuses_only_that_token(auth: Auth) -> None:
    revoked = await auth.issuer.apply(CITY, "user-1")
    kept = await auth.issuer.apply(CITY, "user-1")
    auth.verifier.verify(revoked.user_token)
    assert await auth.revocations.revoke_token(revoked.token_id) == 1
    await auth.revocation_cache.refresh()
    with pytest.raises(DowncityHTTPError) as caught:
        auth.verifier.verify(revoked.user_token)
    assert _error(caught) == (401, "token_revoked", None)
    assert auth.verifier.verify(kept.user_token).jti == kept.token_id


async def test_revoking_a_token_twice_records_it_once(auth: Auth) -> None:
    assert await auth.revocations.revoke_token("jti-x") == 1
    assert await auth.revocations.revoke_token("jti-x") == 0


async def test_revoking_a_user_refuses_tokens_issued_up_to_that_moment(auth: Auth) -> None:
    cutoff = Clock(now_ms())
    earlier = await auth.issuer_at(Clock(cutoff.ms - 1000)).apply(CITY, "user-1")
    at_cutoff = await auth.issuer_at(cutoff).apply(CITY, "user-1")
    afterwards = await auth.issuer_at(Clock(cutoff.ms + 1)).apply(CITY, "user-1")
    assert await RevocationStore(auth.cities.db, clock=cutoff).revoke_user("user-1") == 1
    await auth.revocation_cache.refresh()
    for token in (earlier, at_cutoff):
        with pytest.raises(DowncityHTTPError) as caught:
            auth.verifier.verify(token.user_token)
        assert _error(caught) == (401, "token_revoked", None)
    assert auth.verifier.verify(afterwards.user_token).jti == afterwards.token_id


async def test_a_token_issued_after_a_user_revocation_works(auth: Auth) -> None:
    await auth.revocations.revoke_user("user-1")
    await auth.revocation_cache.refresh()
    issued = await auth.issuer_at(Clock(now_ms() + 1)).apply(CITY, "user-1")
    assert auth.verifier.verify(issued.user_token).jti == issued.token_id


async def test_revoking_a_user_in_one_city_leaves_other_cities_alone(auth: Auth) -> None:
    await auth.cities.create("Extension", city_id="extension")
    web = await auth.issuer.apply(CITY, "user-1")
    extension = await auth.issuer.apply("extension", "user-1")
    await auth.revocations.revoke_user("user-1", city_id="extension")
    await auth.revocation_cache.refresh()
    assert auth.verifier.verify(web.user_token).city_id == CITY
    with pytest.raises(DowncityHTTPError) as caught:
        auth.verifier.verify(extension.user_token)
    assert _error(caught) == (401, "token_revoked", None)


async def test_revoking_another_user_leaves_this_user_alone(auth: Auth) -> None:
    issued = await auth.issuer.apply(CITY, "user-1")
    await auth.revocations.revoke_user("user-2")
    await auth.revocation_cache.refresh()
    assert auth.verifier.verify(issued.user_token).user_id == "user-1"


@pytest.mark.parametrize("token_id", ["", "t" * 65])
async def test_invalid_token_id_is_a_422(offline_revocations: RevocationStore, token_id: str) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await offline_revocations.revoke_token(token_id)
    assert _error(caught) == (422, "invalid_request", "token_id")


async def test_empty_user_id_on_revoke_is_a_422(offline_revocations: RevocationStore) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await offline_revocations.revoke_user("")
    assert _error(caught) == (422, "invalid_request", "user_id")


async def test_apply_for_a_paused_city_is_a_403(auth: Auth) -> None:
    await auth.cities.pause(CITY)
    with pytest.raises(DowncityHTTPError) as caught:
        await auth.issuer.apply(CITY, "user-1")
    assert _error(caught) == (403, "city_paused", "city_id")


async def test_apply_for_an_unknown_city_is_a_404(auth: Auth) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await auth.issuer.apply("nowhere", "user-1")
    assert _error(caught) == (404, "city_not_found", "city_id")


@pytest.mark.parametrize("ttl", [0, -1, MAX_TOKEN_TTL_S + 1, 1.5, "60", True])
async def test_bad_ttl_is_a_422_naming_ttl(offline_issuer: TokenIssuer, ttl: Any) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await offline_issuer.apply(CITY, "user-1", ttl=ttl)
    assert _error(caught) == (422, "invalid_request", "ttl")


async def test_the_maximum_ttl_is_accepted(auth: Auth) -> None:
    issued = await auth.issuer_at(Clock(1714564800000)).apply(CITY, "user-1", ttl=MAX_TOKEN_TTL_S)
    assert issued.expires_at == "2024-05-31T12:00:00.000Z"


@pytest.mark.parametrize("metadata", [["plan"], "plan=pro", 3, {"when": object()}, {"x": float("nan")}])
async def test_bad_metadata_is_a_422_naming_metadata(offline_issuer: TokenIssuer, metadata: Any) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await offline_issuer.apply(CITY, "user-1", metadata=metadata)
    assert _error(caught) == (422, "invalid_request", "metadata")


async def test_oversized_metadata_is_a_422_naming_metadata(offline_issuer: TokenIssuer) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await offline_issuer.apply(CITY, "user-1", metadata={"blob": "x" * 5000})
    assert _error(caught) == (422, "invalid_request", "metadata")


@pytest.mark.parametrize("user_id", ["", None, "u" * 201])
async def test_bad_user_id_is_a_422_naming_user_id(offline_issuer: TokenIssuer, user_id: Any) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        await offline_issuer.apply(CITY, user_id)
    assert _error(caught) == (422, "invalid_request", "user_id")


async def test_claims_returned_from_the_cache_are_independent_copies(auth: Auth) -> None:
    issued = await auth.issuer.apply(CITY, "user-1", metadata={"plan": "pro"})
    auth.verifier.verify(issued.user_token).metadata["plan"] = "changed"
    assert auth.verifier.verify(issued.user_token).metadata == {"plan": "pro"}


async def test_a_validly_signed_token_living_longer_than_the_maximum_ttl_is_refused(auth: Auth) -> None:
    kid, key = auth.keyring.signing_key()
    payload = _valid_payload()
    payload["exp"] = int(payload["iat"]) + 10 * 365 * 24 * 3600
    with pytest.raises(DowncityHTTPError) as caught:
        auth.verifier.verify(_sign(payload, key, kid))
    assert _error(caught) == (401, "token_invalid", None)
    assert caught.value.message == f"the user token lives longer than {MAX_TOKEN_TTL_S} seconds"


async def test_a_token_living_exactly_the_maximum_ttl_verifies(auth: Auth) -> None:
    kid, key = auth.keyring.signing_key()
    payload = _valid_payload()
    payload["iat"] = int(payload["iat"])
    payload["exp"] = payload["iat"] + MAX_TOKEN_TTL_S
    assert auth.verifier.verify(_sign(payload, key, kid)).jti == "jti-1"


async def test_a_token_issued_past_the_clock_skew_is_refused(auth: Auth) -> None:
    clock = Clock(now_ms())
    verifier = TokenVerifier(auth.keyring, auth.revocation_cache, clock=clock)
    kid, key = auth.keyring.signing_key()
    iat_ms = clock.ms + MAX_CLOCK_SKEW_S * 1000 + 1
    payload = {**_valid_payload(), "iat": iat_ms / 1000, "exp": iat_ms // 1000 + 3600}
    with pytest.raises(DowncityHTTPError) as caught:
        verifier.verify(_sign(payload, key, kid))
    assert _error(caught) == (401, "token_invalid", None)
    assert caught.value.message == "the user token is issued in the future"


async def test_a_token_issued_within_the_clock_skew_verifies(auth: Auth) -> None:
    clock = Clock(now_ms())
    verifier = TokenVerifier(auth.keyring, auth.revocation_cache, clock=clock)
    issued = await auth.issuer_at(Clock(clock.ms + MAX_CLOCK_SKEW_S * 1000)).apply(CITY, "user-1")
    assert verifier.verify(issued.user_token).user_id == "user-1"


async def test_a_token_signed_by_a_key_after_its_retirement_is_refused(auth: Auth) -> None:
    old_kid, old_key = auth.keyring.signing_key()
    await auth.keyring.rotate()
    later_ms = now_ms() + MAX_CLOCK_SKEW_S * 1000 + 1
    clock = Clock(later_ms)
    verifier = TokenVerifier(auth.keyring, auth.revocation_cache, clock=clock)
    payload = {**_valid_payload(), "iat": later_ms / 1000, "exp": later_ms // 1000 + 3600}
    with pytest.raises(DowncityHTTPError) as caught:
        verifier.verify(_sign(payload, old_key, old_kid))
    assert _error(caught) == (401, "token_invalid", None)
    assert caught.value.message == "the user token was signed after its key was retired"
