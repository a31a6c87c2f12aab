"""The Quota actor: one detached, named `QuotaBook` every ingress replica admits through.

One actor for the whole cluster serializes the guarded window updates (the database alone would keep them
exact; the actor also gives every replica one window clock, which tests and drills move with `advance_clock` and
hold still with `freeze_clock`). Like the Ledger actor it restarts after a crash and never retries a task itself:
a lost admission is refused to its caller with 503, never taken twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from actors.ledger import ACTOR_OPTIONS
from actors.placement import HEAD_PINNED
from downcity.errors import DowncityHTTPError
from downcity.quotas import Claim, Decision, QuotaBook, Taken
from downcity.quotas.quota import Metric
from downcity.store.database import Database

QUOTA_ACTOR_NAME = "downcity-quotas-v1"


class QuotaActor:
    """A `QuotaBook` in its own process."""

    def __init__(self, database_url: str) -> None:
        self._book = QuotaBook(Database(database_url))

    async def admit(self, city_id: str, claims: list[Claim]) -> Decision:
        """`QuotaBook.admit`."""
        return await self._book.admit(city_id, claims)

    async def settle(self, taken: list[Taken], used: dict[Metric, int]) -> None:
        """`QuotaBook.settle`."""
        await self._book.settle(taken, used)

    async def refund(self, taken: list[Taken]) -> None:
        """`QuotaBook.refund`."""
        await self._book.refund(taken)

    async def consumption(self, city_id: str) -> list[dict[str, int | str]]:
        """`QuotaBook.consumption`."""
        return await self._book.consumption(city_id)

    async def advance_clock(self, ms: int) -> int:
        """Move the windows' clock forward `ms` (tests and drills); the new time."""
        return await self._book.advance_clock(ms)

    async def freeze_clock(self, at_ms: int | None) -> None:
        """Hold the windows' clock at `at_ms` (a test's storm then never straddles two windows); None lets it run."""
        await self._book.freeze_clock(at_ms)


QuotaActorClass = ray.remote(QuotaActor)


class QuotaClient:
    """The `QuotaPort` over the Quota actor."""

    def __init__(self, handle: ActorHandle[QuotaActor]) -> None:
        self.handle = handle

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.handle, method).remote(*args)
        except RayActorError as lost:
            raise DowncityHTTPError(503, "quotas_unavailable", "the quota actor is unavailable") from lost

    async def admit(self, city_id: str, claims: Sequence[Claim]) -> Decision:
        """`QuotaBook.admit` on the actor."""
        decision: Decision = await self._call("admit", city_id, list(claims))
        return decision

    async def settle(self, taken: Sequence[Taken], used: Mapping[Metric, int]) -> None:
        """`QuotaBook.settle` on the actor."""
        await self._call("settle", list(taken), dict(used))

    async def refund(self, taken: Sequence[Taken]) -> None:
        """`QuotaBook.refund` on the actor."""
        await self._call("refund", list(taken))

    async def consumption(self, city_id: str) -> list[dict[str, int | str]]:
        """`QuotaBook.consumption` on the actor."""
        rows: list[dict[str, int | str]] = await self._call("consumption", city_id)
        return rows


def get_quotas(database_url: str, *, resources: dict[str, float] | None = None) -> QuotaClient:
    """The client of the Quota actor, creating it if needed (detached: it outlives its callers)."""
    options = QuotaActorClass.options(
        name=QUOTA_ACTOR_NAME, resources=HEAD_PINNED if resources is None else resources, **ACTOR_OPTIONS
    )
    return QuotaClient(cast(ActorHandle[QuotaActor], options.remote(database_url)))
