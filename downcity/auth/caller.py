"""`Caller`: the authenticated product user of one request, with the city it calls for."""

from __future__ import annotations

from dataclasses import dataclass

from downcity.ai.context import CityInfo, UserInfo
from downcity.auth.tokens import UserClaims
from downcity.cities import City


@dataclass(frozen=True)
class Caller:
    """An authenticated product user calling on behalf of one city."""

    claims: UserClaims
    city: City

    @property
    def user_id(self) -> str:
        """The caller's user id within its city."""
        return self.claims.user_id

    @property
    def city_id(self) -> str:
        """The city the token was issued for."""
        return self.claims.city_id

    def user_info(self) -> UserInfo:
        """The `ctx.user` hooks and actions see."""
        return UserInfo(user_id=self.claims.user_id, metadata=dict(self.claims.metadata))

    def city_info(self) -> CityInfo:
        """The `ctx.city` hooks and actions see."""
        return CityInfo(city_id=self.city.city_id, name=self.city.name, status=self.city.status)
