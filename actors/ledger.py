"""The Ledger as a detached, named Ray actor, and `get_ledger`, the client every caller uses.

The actor is restarted by Ray after a crash (`max_restarts=-1`) but never retries a task itself
(`max_task_retries=0`): the client retries with the same idempotency keys instead, which is safe because
every Ledger op is idempotent, and which also covers ops that committed just before the crash.

A Ray call costs far more than a ledger op, so the client coalesces the ops its process issues
concurrently into one `apply` call per round trip; the actor feeds them to its Ledger together, where
they share one group commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from actors.metrics import ray_metrics
from actors.placement import HEAD_PINNED
from actors.serving import RAY_NAMESPACE
from downcity.errors import DowncityHTTPError
from downcity.ledger import Balance, HoldResult, LeaseResult, Ledger, LedgerEntry, SettleResult, ShardedLedger
from downcity.settings import Settings
from downcity.store.database import Database

LEDGER_ACTOR_NAME = "downcity-ledger-v1"
RETRY_DEADLINE_S = 30.0
LEDGER_METHODS = frozenset(
    {
        "credit",
        "debit",
        "reserve",
        "settle",
        "lease",
        "release",
        "renew",
        "record_usage",
        "balance",
        "history",
        "sweep_expired_holds",
    }
)
# Set at creation: ray.remote's typed keyword overload has no max_concurrency.
ACTOR_OPTIONS: dict[str, Any] = {
    "namespace": RAY_NAMESPACE,
    "lifetime": "detached",
    "get_if_exists": True,
    "max_restarts": -1,
    "max_task_retries": 0,
    "num_cpus": 0,
    "max_concurrency": 1000,
}
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 1.0
_MAX_CALLS_PER_TRIP = 2048
# One trip at a time per process: ops issued meanwhile wait and share the next trip. On the text path this
# gave 290-345 req/s against 170-250 with two or four trips, which split ops into more Ray calls and batches.
_TRIPS_IN_FLIGHT = 1
_RETRIED = (ActorDiedError, ActorUnavailableError, RayActorError)

Call = tuple[str, tuple[Any, ...], dict[str, Any]]
Outcome = tuple[bool, Any]


class LedgerActor:
    """One Ledger (one shard) in its own process; it opens its database and starts on the first call."""

    def __init__(
        self, database_url: str, shard: tuple[int, int], hold_expiry_s: int, lease_max_fraction: float
    ) -> None:
        self._database_url = database_url
        self._shard = shard
        self._hold_expiry_s = hold_expiry_s
        self._lease_max_fraction = lease_max_fraction
        self._ledger: Ledger | None = None
        self._starting = asyncio.Lock()

    async def _open(self) -> Ledger:
        async with self._starting:
            if self._ledger is None:
                ledger = Ledger(
                    Database(self._database_url),
                    shard=self._shard,
                    hold_expiry_s=self._hold_expiry_s,
                    metrics=ray_metrics(),
                    lease_max_fraction=self._lease_max_fraction,
                )
                await ledger.start()
                self._ledger = ledger
        return self._ledger

    async def ping(self) -> str:
        """The database URL this actor serves, once its Ledger is running."""
        await self._open()
        return self._database_url

    async def apply(self, calls: list[Call]) -> list[Outcome]:
        """Run Ledger calls `(method, args, kwargs)` together; each gives (True, result) or (False, error)."""
        ledger = await self._open()
        return list(await asyncio.gather(*(_run(ledger, call) for call in calls)))


async def _run(ledger: Ledger, call: Call) -> Outcome:
    method, args, kwargs = call
    if method not in LEDGER_METHODS:
        return False, ValueError(f"{method!r} is not a Ledger operation")
    try:
        return True, await getattr(ledger, method)(*args, **kwargs)
    except Exception as error:
        return False, error


# Decorating in place would hide `.options` from mypy, which types a decorated class as the class itself.
LedgerActorClass = ray.remote(LedgerActor)


def actor_name(index: int, shards: int, base: str = LEDGER_ACTOR_NAME) -> str:
    """The actor name of shard `index`: the bare base name when there is a single shard."""
    return base if shards == 1 else f"{base}-{index}"


class _ActorShard:
    """One shard's actor behind the Ledger API: coalesces concurrent ops and retries them across restarts."""

    def __init__(self, connect: Callable[[], ActorHandle[LedgerActor]], deadline_s: float) -> None:
        self._connect = connect
        self._deadline_s = deadline_s
        self.handle = connect()
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._trips: set[asyncio.Task[None]] = set()

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(((method, args, kwargs), future))
        # A finished trip may not have run its done-callbacks yet, so liveness is read from done().
        self._trips = {trip for trip in self._trips if not trip.done()}
        if len(self._trips) < _TRIPS_IN_FLIGHT:
            self._trips.add(asyncio.create_task(self._drain()))
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[:_MAX_CALLS_PER_TRIP]
            del self._pending[:_MAX_CALLS_PER_TRIP]
            try:
                outcomes = await self._apply([call for call, _ in batch])
            except Exception as failed:
                outcomes = [(False, failed)] * len(batch)
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    async def _apply(self, calls: list[Call]) -> list[Outcome]:
        deadline = time.monotonic() + self._deadline_s
        backoff = _FIRST_BACKOFF_S
        while True:
            try:
                outcomes: list[Outcome] = await self.handle.apply.remote(calls)
                return outcomes
            except RayTaskError as failed:
                if isinstance(failed.cause, DowncityHTTPError):
                    raise failed.cause from None
                raise
            except _RETRIED as lost:
                if time.monotonic() + backoff > deadline:
                    raise DowncityHTTPError(503, "ledger_unavailable", "the ledger actor is unavailable") from lost
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            # A killed-for-good actor is created again; a restarting one is returned as is.
            self.handle = self._connect()

    async def start(self) -> None:
        """Nothing to start: the actor starts its Ledger on its first call."""

    async def close(self) -> None:
        """Nothing to close: the actor outlives its clients."""

    async def credit(self, key: str, user_id: str, amount: int, note: str | None = None) -> LedgerEntry:
        """`Ledger.credit` on the actor."""
        entry: LedgerEntry = await self._call("credit", key, user_id, amount, note)
        return entry

    async def debit(self, key: str, user_id: str, amount: int, note: str | None = None) -> LedgerEntry:
        """`Ledger.debit` on the actor."""
        entry: LedgerEntry = await self._call("debit", key, user_id, amount, note)
        return entry

    async def reserve(self, key: str, user_id: str, amount: int) -> HoldResult:
        """`Ledger.reserve` on the actor."""
        hold: HoldResult = await self._call("reserve", key, user_id, amount)
        return hold

    async def settle(
        self,
        key: str,
        user_id: str,
        amount: int,
        *,
        ref: str | None = None,
        note: str | None = None,
        metadata: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        lease: str | None = None,
        lease_hold: int = 0,
    ) -> SettleResult:
        """`Ledger.settle` on the actor."""
        fields: dict[str, Any] = {"ref": ref, "note": note, "metadata": metadata, "usage": usage}
        if lease is not None:
            fields.update(lease=lease, lease_hold=lease_hold)
        result: SettleResult = await self._call("settle", key, user_id, amount, **fields)
        return result

    async def lease(self, key: str, user_id: str, owner: str, amount: int, minimum: int) -> LeaseResult:
        """`Ledger.lease` on the actor."""
        result: LeaseResult = await self._call("lease", key, user_id, owner, amount, minimum)
        return result

    async def release(
        self, key: str, *, user_id: str | None = None, usage: dict[str, Any] | None = None
    ) -> HoldResult | None:
        """`Ledger.release` on the actor."""
        hold: HoldResult | None = await self._call("release", key, user_id=user_id, usage=usage)
        return hold

    async def renew(self, keys: list[str], user_id: str) -> list[str]:
        """`Ledger.renew` on the actor."""
        held: list[str] = await self._call("renew", keys, user_id)
        return held

    async def record_usage(self, usage: dict[str, Any]) -> None:
        """`Ledger.record_usage` on the actor."""
        await self._call("record_usage", usage)

    async def balance(self, user_id: str) -> Balance:
        """`Ledger.balance` on the actor."""
        balance: Balance = await self._call("balance", user_id)
        return balance

    async def history(self, user_id: str, limit: int = 50, before_id: int | None = None) -> list[LedgerEntry]:
        """`Ledger.history` on the actor."""
        entries: list[LedgerEntry] = await self._call("history", user_id, limit, before_id)
        return entries

    async def sweep_expired_holds(self, now_ms: int | None = None) -> int:
        """`Ledger.sweep_expired_holds` on the actor."""
        released: int = await self._call("sweep_expired_holds", now_ms)
        return released


class LedgerClient(ShardedLedger):
    """The Ledger API over the ledger actors, routing each user to the shard that owns them."""

    def __init__(self, shards: list[_ActorShard]) -> None:
        super().__init__(shards)
        self.handles = [shard.handle for shard in shards]
        self._actor_shards = shards

    async def ping(self) -> None:
        """Return once every shard's actor runs its Ledger (so its database answered)."""
        await asyncio.gather(*(shard.handle.ping.remote() for shard in self._actor_shards))


def _connector(
    name: str,
    database_url: str,
    shard: tuple[int, int],
    settings: Settings,
    resources: dict[str, float],
) -> Callable[[], ActorHandle[LedgerActor]]:
    def connect() -> ActorHandle[LedgerActor]:
        options = LedgerActorClass.options(name=name, resources=resources, **ACTOR_OPTIONS)
        handle = options.remote(database_url, shard, settings.hold_expiry_s, settings.lease_max_fraction)
        return cast(ActorHandle[LedgerActor], handle)

    return connect


def get_ledger(
    database_url: str,
    shards: int = 1,
    *,
    name: str = LEDGER_ACTOR_NAME,
    hold_expiry_s: int | None = None,
    retry_deadline_s: float = RETRY_DEADLINE_S,
    resources: dict[str, float] | None = None,
) -> LedgerClient:
    """The client for the ledger actors, creating them if needed (detached: they outlive the caller).

    New actors request `resources` (default: a share of the head node, see `actors.placement`). An actor
    that already exists under the name keeps the database and placement it was created with.
    """
    if shards < 1:
        raise ValueError("shards must be at least 1")
    settings = Settings.from_env()
    if hold_expiry_s is not None:
        settings = replace(settings, hold_expiry_s=hold_expiry_s)
    placement = HEAD_PINNED if resources is None else resources
    connectors = [
        _connector(actor_name(index, shards, name), database_url, (index, shards), settings, placement)
        for index in range(shards)
    ]
    return LedgerClient([_ActorShard(connect, retry_deadline_s) for connect in connectors])
