"""User tokens: EdDSA JWTs issued for a city's user and verified locally on every request."""

from __future__ import annotations

import copy
import json
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from downcity.auth.keyring import KeyRing
from downcity.auth.revocation import RevocationCache
from downcity.cities import CityStore, ms_to_iso
from downcity.errors import DowncityHTTPError, invalid
from downcity.settings import DEFAULT_TOKEN_TTL_S, MAX_CLOCK_SKEW_S, MAX_TOKEN_TTL_S
from downcity.store.database import now_ms

ISSUER = "downcity"
ALGORITHM = "EdDSA"
MAX_USER_ID_CHARS = 200
MAX_METADATA_BYTES = 4096
DEFAULT_VERIFY_CACHE_SIZE = 4096
MAX_TOKEN_CHARS = 16 * 1024
_REQUIRED_CLAIMS = ["iss", "city_id", "user_id", "metadata", "jti", "iat", "exp"]


class UserClaims(BaseModel):
    """What a verified user token says: whose it is, for which city, and until when."""

    model_config = ConfigDict(frozen=True, strict=True)

    city_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    metadata: dict[str, Any]
    jti: str = Field(min_length=1)
    iat: float
    exp: int

    @property
    def iat_ms(self) -> int:
        """Issue time in epoch milliseconds (`iat` carries millisecond precision)."""
        return round(self.iat * 1000)


class IssuedToken(BaseModel):
    """The response to a token application."""

    user_token: str
    city_id: str
    user_id: str
    token_id: str
    expires_at: str


def token_error(type: str, message: str) -> DowncityHTTPError:
    """401 with a token-specific type: `token_expired`, `token_invalid` or `token_revoked`."""
    return DowncityHTTPError(401, type, message)


def _check_user_id(user_id: object) -> str:
    if not isinstance(user_id, str) or not user_id:
        raise invalid("user_id must be a non-empty string", "user_id")
    if len(user_id) > MAX_USER_ID_CHARS:
        raise invalid(f"user_id must be at most {MAX_USER_ID_CHARS} characters", "user_id")
    return user_id


def _check_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise invalid("metadata must be a JSON object", "metadata")
    try:
        encoded = json.dumps(metadata, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        raise invalid("metadata must contain only JSON values", "metadata") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise invalid(f"metadata must encode to at most {MAX_METADATA_BYTES} bytes of JSON", "metadata")
    normalized: dict[str, Any] = json.loads(encoded)
    return normalized


def _check_ttl(ttl: object) -> int:
    if ttl is None:
        return DEFAULT_TOKEN_TTL_S
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TOKEN_TTL_S:
        raise invalid(f"ttl must be an integer number of seconds from 1 to {MAX_TOKEN_TTL_S}", "ttl")
    return ttl


class TokenIssuer:
    """Issues user tokens for active cities, signed with the key ring's active key."""

    def __init__(self, keyring: KeyRing, cities: CityStore, *, clock: Callable[[], int] = now_ms) -> None:
        self._keyring = keyring
        self._cities = cities
        self._clock = clock

    async def apply(
        self, city_id: str, user_id: str, metadata: dict[str, Any] | None = None, ttl: int | None = None
    ) -> IssuedToken:
        """Issue a token for `user_id` in `city_id`, valid for `ttl` seconds (default 7 days)."""
        if not isinstance(city_id, str) or not city_id:
            raise invalid("city_id must be a non-empty string", "city_id")
        user_id = _check_user_id(user_id)
        claims_metadata = _check_metadata(metadata)
        ttl_s = _check_ttl(ttl)
        city = await self._cities.get(city_id)
        if city.status != "active":
            raise DowncityHTTPError(403, "city_paused", f"city {city_id!r} is paused", "city_id")
        kid, private_key = self._keyring.signing_key()
        issued_ms = self._clock()
        jti = secrets.token_urlsafe(16)
        exp = issued_ms // 1000 + ttl_s
        payload = {
            "iss": ISSUER,
            "city_id": city_id,
            "user_id": user_id,
            "metadata": claims_metadata,
            "jti": jti,
            "iat": issued_ms / 1000,
            "exp": exp,
        }
        token = jwt.encode(payload, private_key, algorithm=ALGORITHM, headers={"kid": kid})
        return IssuedToken(
            user_token=token, city_id=city_id, user_id=user_id, token_id=jti, expires_at=ms_to_iso(exp * 1000)
        )


class TokenVerifier:
    """Verifies user tokens from cached keys and revocations only: no database round trip."""

    def __init__(
        self,
        keyring: KeyRing,
        revocations: RevocationCache,
        *,
        clock: Callable[[], int] = now_ms,
        cache_size: int = DEFAULT_VERIFY_CACHE_SIZE,
    ) -> None:
        self._keyring = keyring
        self._revocations = revocations
        self._clock = clock
        self._cache_size = cache_size
        self._decoded: OrderedDict[str, UserClaims] = OrderedDict()

    def verify(self, token: str) -> UserClaims:
        """The token's claims; 401 `token_invalid`, `token_expired` or `token_revoked` otherwise."""
        claims = self._decoded.get(token) if isinstance(token, str) else None
        if claims is None:
            claims = self._decode(token)
            self._decoded[token] = claims
            if len(self._decoded) > self._cache_size:
                self._decoded.popitem(last=False)
        else:
            self._decoded.move_to_end(token)
        # Expiry and revocation change over time, so they are checked on cache hits too.
        if self._clock() >= claims.exp * 1000:
            raise token_error("token_expired", "the user token has expired")
        if self._revocations.is_revoked(claims.jti, claims.city_id, claims.user_id, claims.iat_ms):
            raise token_error("token_revoked", "the user token has been revoked")
        if not claims.metadata:
            return claims
        # Claims are frozen but metadata is a dict: hand each caller its own copy so a hook
        # that mutates it cannot change what later requests with this token see.
        return claims.model_copy(update={"metadata": copy.deepcopy(claims.metadata)})

    def _decode(self, token: object) -> UserClaims:
        if not isinstance(token, str) or not token:
            raise token_error("token_invalid", "the user token is missing")
        if len(token) > MAX_TOKEN_CHARS:
            raise token_error("token_invalid", "the user token is too long")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise token_error("token_invalid", "the user token is malformed") from None
        key = self._keyring.public_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise token_error("token_invalid", "the user token is signed by an unknown key")
        try:
            payload = jwt.decode(
                token,
                key.key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": _REQUIRED_CLAIMS, "verify_exp": False, "verify_iat": False},
            )
            claims = UserClaims.model_validate(payload)
        except (jwt.PyJWTError, ValidationError):
            raise token_error("token_invalid", "the user token signature or claims are invalid") from None
        self._check_lifetime(claims, key.retired_at_ms)
        return claims

    def _check_lifetime(self, claims: UserClaims, retired_at_ms: int | None) -> None:
        # A validly signed token still has to be one the issuer could have made: no longer-lived than the
        # maximum TTL, not issued in the future (it would outrun later user revocations), and not issued by
        # a key after it was retired. Each only gets more true with time, so checking once per decode holds.
        if claims.exp - claims.iat > MAX_TOKEN_TTL_S:
            raise token_error("token_invalid", f"the user token lives longer than {MAX_TOKEN_TTL_S} seconds")
        skew_ms = MAX_CLOCK_SKEW_S * 1000
        if claims.iat_ms > self._clock() + skew_ms:
            raise token_error("token_invalid", "the user token is issued in the future")
        if retired_at_ms is not None and claims.iat_ms > retired_at_ms + skew_ms:
            raise token_error("token_invalid", "the user token was signed after its key was retired")
