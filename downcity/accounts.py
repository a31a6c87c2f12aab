"""Accounts: whose balance a call spends. An account is (city, user) unless cities share an account space.

User ids belong to each product's own backend, so "jane" of one product is not "jane" of another: by default
the account of a user is `<city_id>/<user_id>`. A business running several products on one Federation may
declare that named cities share one account space; their users' account is then `~<space>/<user_id>`, and
their balances are one. City ids never contain `/` or `~`, so account ids never collide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_SPACE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# The account space of balances kept before accounts were per city (see migration 0004).
LEGACY_SPACE = "legacy"
# city_id (≤ 63) + "/" + user_id (≤ 200), or "~" + space (≤ 63) + "/" + user_id.
MAX_ACCOUNT_ID_CHARS = 265


class AccountSpaces:
    """Which cities share an account space; every other city is its own."""

    def __init__(self, shared: Mapping[str, Sequence[str]] | None = None) -> None:
        self._space_of: dict[str, str] = {}
        for space, cities in (shared or {}).items():
            if not _SPACE_PATTERN.fullmatch(space) or space == LEGACY_SPACE:
                raise ValueError(f"account space {space!r} must be a lowercase id and not {LEGACY_SPACE!r}")
            if isinstance(cities, str):
                raise ValueError(f"account space {space!r} takes a list of city ids, not one string")
            for city_id in cities:
                if city_id in self._space_of:
                    raise ValueError(
                        f"city {city_id!r} is in two account spaces: {self._space_of[city_id]!r}, {space!r}"
                    )
                self._space_of[city_id] = space

    def account_id(self, city_id: str, user_id: str) -> str:
        """The account `user_id` of `city_id` spends from."""
        space = self._space_of.get(city_id)
        return f"~{space}/{user_id}" if space is not None else f"{city_id}/{user_id}"

    @property
    def shared(self) -> dict[str, list[str]]:
        """The declared spaces and their cities."""
        spaces: dict[str, list[str]] = {}
        for city_id, space in self._space_of.items():
            spaces.setdefault(space, []).append(city_id)
        return spaces
