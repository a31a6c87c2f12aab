"""Authenticating a request: a verified user (token + active city) or the admin."""

from __future__ import annotations

from downcity.auth.caller import Caller
from downcity.errors import DowncityHTTPError, forbidden, unauthorized
from downcity.runtime import Runtime


def bearer(authorization: str | None) -> str:
    """The credential in an `Authorization: Bearer …` header, or 401."""
    if not authorization:
        raise unauthorized("missing Authorization header")
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise unauthorized("Authorization header must be 'Bearer <token>'")
    return credential.strip()


async def authenticate_user(runtime: Runtime, authorization: str | None, city_header: str | None) -> Caller:
    """Verify a user token locally, then check its city is known, active and matches `X-City-Id`."""
    claims = runtime.security.verifier.verify(bearer(authorization))
    if city_header is not None and city_header != claims.city_id:
        raise DowncityHTTPError(403, "city_mismatch", "X-City-Id does not match the token's city")
    city = runtime.city_cache.get(claims.city_id)
    if city is None:
        # Only a signed token reaches here, so its city existed at issue time: it is just newer than our cache.
        await runtime.city_cache.load()
        city = runtime.city_cache.get(claims.city_id)
    if city is None:
        raise DowncityHTTPError(403, "city_not_found", f"city {claims.city_id!r} does not exist")
    if city.status != "active":
        raise DowncityHTTPError(403, "city_paused", f"city {claims.city_id!r} is paused")
    return Caller(claims=claims, city=city)


def authenticate_admin(runtime: Runtime, authorization: str | None) -> None:
    """Accept only the admin credential: a valid user token gets 403, anything else 401."""
    credential = bearer(authorization)
    if runtime.security.admin.verify(credential):
        return
    try:
        runtime.security.verifier.verify(credential)
    except DowncityHTTPError:
        raise unauthorized("invalid admin credential") from None
    raise forbidden("admin credential required")
