"""`LeaseBook`: an ingress replica's credit leases, and admission against them in memory, with no Ledger trip.

A lease is a durable hold the Ledger grants this replica (`Ledger.lease`) on a block of an account's available
credit. The replica admits a call when the lease's unspent, unadmitted credit covers the call's hold, and the
call's settle takes its charge out of the lease (`Ledger.settle(lease=…)`). So every admitted call is inside a
durable hold, as with a per-call hold, and a replica that dies leaves leases that expire and are swept.

Sizing (`lease_size`): a lease asks for `window_s` seconds of the account's recent spend on this replica, at least
`min_calls` holds of the call asking; the Ledger grants at most `lease_max_fraction` of the available balance, and
nothing below the minimum, so a low balance leaves admission to exact per-call holds. The book tops a lease up
in the background when half of its target is admitted or spent, renews it every third of the hold TTL, and
returns what is left when no call used it for `idle_s`, when the Ledger recalled it, and on shutdown. A lease is
used for admission only while well inside the expiry the Ledger last confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from downcity.ledger.types import LedgerPort, SettleResult
from downcity.metrics import Metrics, NoMetrics
from downcity.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeasePolicy:
    """How leases are sized and kept (the `DOWNCITY_LEASE_*` knobs)."""

    enabled: bool
    window_s: float
    min_calls: int
    idle_s: float
    recall_wait_s: float
    ttl_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> LeasePolicy:
        """The policy of these settings; a lease lives as long as a hold."""
        return cls(
            enabled=settings.leases and settings.lease_window_s > 0 and settings.lease_min_calls > 0,
            window_s=settings.lease_window_s,
            min_calls=settings.lease_min_calls,
            idle_s=settings.lease_idle_s,
            recall_wait_s=settings.lease_recall_wait_s,
            ttl_s=settings.hold_expiry_s,
        )

    @property
    def upkeep_s(self) -> float:
        """How often the book looks after its leases: twice per idle time, six times per TTL, at most 20 a second."""
        return max(0.05, min(self.idle_s / 2, self.ttl_s / 6))


def lease_size(spend_per_s: float, hold: int, policy: LeasePolicy) -> int:
    """What a lease asks for: `window_s` of recent spend, and at least `min_calls` holds of the call asking."""
    return max(policy.min_calls * hold, math.ceil(spend_per_s * policy.window_s))


class SpendMeter:
    """An account's admitted holds over the last `window_s`, as a rate."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._sum = 0

    def add(self, now: float, amount: int) -> None:
        """Count `amount` admitted at `now`."""
        self._events.append((now, amount))
        self._sum += amount
        self._trim(now)

    def rate(self, now: float) -> float:
        """Microcredits per second over the window."""
        self._trim(now)
        return self._sum / self.window_s if self.window_s > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._sum -= self._events.popleft()[1]


@dataclass(frozen=True)
class Ticket:
    """A call admitted on a lease: the lease's key and the call's share of it (its hold)."""

    lease: str
    user_id: str
    amount: int


@dataclass(eq=False)
class Lease:
    """One lease as this replica sees it: what is left of it, and what admitted calls may still spend of that."""

    key: str
    user_id: str
    amount: int
    usable_until: float
    last_used: float
    in_flight: int = 0
    draining: bool = False
    renew_at: float = 0.0
    top_up: asyncio.Task[None] | None = None

    @property
    def free(self) -> int:
        """Credit neither spent nor promised to a call in flight."""
        return self.amount - self.in_flight

    def usable(self, now: float) -> bool:
        """Whether new calls may be admitted on it."""
        return not self.draining and now < self.usable_until


@dataclass(eq=False)
class LeaseBook:
    """This replica's leases, one per account at a time, and the background work that keeps them."""

    ledger: LedgerPort
    owner: str
    policy: LeasePolicy
    clock: Callable[[], float] = time.monotonic
    metrics: Metrics = field(default_factory=NoMetrics)
    leases: dict[str, Lease] = field(default_factory=dict)
    _meters: dict[str, SpendMeter] = field(default_factory=dict)
    _acquiring: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _denied_until: dict[str, float] = field(default_factory=dict)
    _returning: set[asyncio.Task[None]] = field(default_factory=set)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _loop: asyncio.Task[None] | None = None

    async def admit(self, user_id: str, amount: int) -> Ticket | None:
        """A ticket when a lease covers `amount` (getting one first if the account has none); else None."""
        now = self.clock()
        meter = self._meters.setdefault(user_id, SpendMeter(self.policy.window_s))
        meter.add(now, amount)
        ticket = self._take(user_id, amount, now)
        if ticket is not None or user_id in self.leases or now < self._denied_until.get(user_id, 0.0):
            return ticket
        task = self._acquiring.get(user_id)
        if task is None:
            task = asyncio.create_task(self._acquire(user_id, amount), name="lease-acquire")
            self._acquiring[user_id] = task
        await asyncio.shield(task)
        return self._take(user_id, amount, self.clock())

    def settled(self, ticket: Ticket, result: SettleResult) -> None:
        """The ticket's call settled: its charge left the lease (or the balance, when the lease was gone)."""
        lease = self._lease_of(ticket)
        if lease is None:
            return
        charged = result.entry.amount_microcredits if result.entry is not None else 0
        lease.in_flight -= ticket.amount
        lease.amount = max(0, lease.amount - charged)
        if result.lease_recalled:
            lease.draining = True
        self._return_if_done(lease)

    def released(self, ticket: Ticket) -> None:
        """The ticket's call failed before any charge: its share is free again."""
        lease = self._lease_of(ticket)
        if lease is None:
            return
        lease.in_flight -= ticket.amount
        self._return_if_done(lease)

    def start(self) -> None:
        """Start the background renewal and idle return (idempotent)."""
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run(), name="lease-book")

    async def close(self) -> None:
        """Stop the background work and return every lease's unspent credit."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        for task in [*self._acquiring.values(), *(lease.top_up for lease in self.leases.values() if lease.top_up)]:
            task.cancel()
        for lease in list(self.leases.values()):
            self._spawn_return(lease)
        await asyncio.gather(*self._returning)

    async def tick(self) -> None:
        """One round of upkeep: return idle, recalled or spent leases, renew the others when due, and report
        what the book holds."""
        now = self.clock()
        renewals: list[Lease] = []
        for lease in list(self.leases.values()):
            if lease.in_flight == 0 and (lease.draining or now - lease.last_used >= self.policy.idle_s):
                self._spawn_return(lease)
            elif now >= lease.renew_at:
                renewals.append(lease)
        self.metrics.leases_state(
            held=len(self.leases),
            leased_microcredits=sum(lease.amount for lease in self.leases.values()),
            in_flight_microcredits=sum(lease.in_flight for lease in self.leases.values()),
        )
        await asyncio.gather(*(self._renew(lease) for lease in renewals))

    def _take(self, user_id: str, amount: int, now: float) -> Ticket | None:
        lease = self.leases.get(user_id)
        if lease is None or not lease.usable(now):
            return None
        if lease.free < amount:
            # Too little left for this call: hand the rest back once no call is using it.
            self._return_if_done(lease, exhausted=True)
            return None
        lease.in_flight += amount
        lease.last_used = now
        target = lease_size(self._meters[user_id].rate(now), amount, self.policy)
        if lease.free < target // 2 and (lease.top_up is None or lease.top_up.done()):
            lease.top_up = asyncio.create_task(self._grow(lease, target - lease.free, amount), name="lease-top-up")
        return Ticket(lease.key, user_id, amount)

    def _lease_of(self, ticket: Ticket) -> Lease | None:
        lease = self.leases.get(ticket.user_id)
        return lease if lease is not None and lease.key == ticket.lease else None

    def _confirmed(self, lease: Lease, sent_at: float) -> None:
        # Usable for two thirds of the TTL from when the op was sent: the Ledger's expiry is later than that.
        lease.usable_until = sent_at + self.policy.ttl_s * 2 / 3
        lease.renew_at = sent_at + self.policy.ttl_s / 3

    async def _acquire(self, user_id: str, hold: int) -> None:
        try:
            now = self.clock()
            size = lease_size(self._meters[user_id].rate(now), hold, self.policy)
            key = f"lease:{self.owner}:{next(self._seq)}"
            try:
                granted = await self.ledger.lease(key, user_id, self.owner, size, self.policy.min_calls * hold)
            except Exception as error:
                # A lease is only ever an optimisation: without one the call takes its own hold.
                logger.warning("lease for %r not granted: %r", user_id, error)
                granted = None
            if granted is None or granted.granted_microcredits == 0:
                # Too little credit for a lease (or grants paused by a recall): per-call holds for a while.
                self._denied_until[user_id] = self.clock() + self.policy.idle_s
                return
            lease = Lease(key, user_id, granted.amount_microcredits, 0.0, self.clock())
            self._confirmed(lease, now)
            self.leases[user_id] = lease
        finally:
            self._acquiring.pop(user_id, None)

    async def _grow(self, lease: Lease, amount: int, hold: int) -> None:
        sent_at = self.clock()
        try:
            grown = await self.ledger.lease(lease.key, lease.user_id, self.owner, amount, hold)
        except Exception as error:
            logger.warning("top-up of lease %r failed: %r", lease.key, error)
            return
        if grown.status != "held":
            lease.draining = True
            return
        lease.amount += grown.granted_microcredits
        if grown.granted_microcredits > 0:
            self._confirmed(lease, sent_at)

    async def _renew(self, lease: Lease) -> None:
        sent_at = self.clock()
        try:
            held = await self.ledger.renew([lease.key], lease.user_id)
        except Exception as error:
            # Kept: the next round retries, and the lease stops admitting before the Ledger's expiry.
            logger.warning("renewing lease %r failed: %r", lease.key, error)
            return
        if lease.key in held:
            self._confirmed(lease, sent_at)
        else:
            lease.draining = True

    def _return_if_done(self, lease: Lease, *, exhausted: bool = False) -> None:
        if lease.in_flight == 0 and (exhausted or lease.draining or lease.free <= 0):
            self._spawn_return(lease)

    def _spawn_return(self, lease: Lease) -> None:
        """Stop admitting on the lease now, and give its unspent credit back to the Ledger."""
        if self.leases.get(lease.user_id) is not lease:
            return
        del self.leases[lease.user_id]
        task = asyncio.create_task(self._return(lease), name="lease-return")
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    async def _return(self, lease: Lease) -> None:
        try:
            await self.ledger.release(lease.key, user_id=lease.user_id)
        except Exception as error:
            logger.warning("returning lease %r failed (%r); it expires instead", lease.key, error)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.policy.upkeep_s)
            try:
                await self.tick()
            except Exception:
                logger.exception("lease upkeep failed")
