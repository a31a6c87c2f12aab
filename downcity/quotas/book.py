"""`QuotaBook`: quota budgets in durable windows, taken and trued up by guarded SQL deltas.

Each budget's use in one window is one `quota_windows` row. Admission adds a call's claims to their rows with
``UPDATE … SET used = used + n WHERE used + n <= limit``: the database applies it atomically, so however many
ingress replicas admit at once, a window never holds more than its limit (the Ledger's guarded-delta rule). A
call's claims are taken all or none (a refused call's claims are given back in the same transaction). The book
group-commits: every admission, true-up and refund that arrives while a transaction is in flight goes into the
next one, in arrival order, and none is answered before its transaction commits. One book per process (the Quota
actor, or the in-process runtime) runs one transaction at a time, which keeps SQLite single-writer.

Settling trues a call's token and credit claims up to what it used, refunding unused estimate (or adding what
it used beyond it); a call that never ran gets everything back. Windows are judged by the book's `Clock`, one
clock for every replica, which tests and drills may move.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from downcity.quotas.quota import Claim, Metric, window_of
from downcity.store.database import Database, now_ms
from downcity.store.schema import quota_windows


class Clock:
    """The windows' clock: the system clock, moved forward by `advance` or held still by `freeze`."""

    def __init__(self) -> None:
        self._offset_ms = 0
        self._frozen_ms: int | None = None

    def now_ms(self) -> int:
        """The current time of the windows, epoch ms."""
        return self._frozen_ms if self._frozen_ms is not None else now_ms() + self._offset_ms

    def advance(self, ms: int) -> int:
        """Move the clock `ms` forward (to see the next window without waiting for it); the new time."""
        if self._frozen_ms is not None:
            self._frozen_ms += ms
        else:
            self._offset_ms += ms
        return self.now_ms()

    def freeze(self, at_ms: int | None) -> None:
        """Hold the clock at `at_ms`, or let it run again (from the system clock) with None."""
        self._frozen_ms = at_ms
        self._offset_ms = 0


@dataclass(frozen=True)
class Taken:
    """One admitted claim: which window row it moved, and by how much."""

    bucket: str
    metric: Metric
    window_start_ms: int
    amount: int


@dataclass(frozen=True)
class Standing:
    """A budget after an admission (or at its refusal): its limit, what is left and when its window resets."""

    metric: Metric
    limit: int
    remaining: int
    reset_ms: int


@dataclass(frozen=True)
class Decision:
    """An admission's answer: what it took, the tightest standing per metric, and the metric that refused."""

    taken: tuple[Taken, ...] = ()
    standings: dict[Metric, Standing] = field(default_factory=dict)
    refused: Metric | None = None

    @property
    def admitted(self) -> bool:
        """Whether every claim fit its budget."""
        return self.refused is None


class _Refused(Exception):
    def __init__(self, standing: Standing) -> None:
        self.standing = standing


def _tightest(standings: dict[Metric, Standing], standing: Standing) -> None:
    known = standings.get(standing.metric)
    if known is None or standing.remaining < known.remaining:
        standings[standing.metric] = standing


class QuotaPort(Protocol):
    """Where admission takes quota: the `QuotaBook` in-process, or the Quota actor that runs one."""

    async def admit(self, city_id: str, claims: Sequence[Claim]) -> Decision: ...

    async def settle(self, taken: Sequence[Taken], used: Mapping[Metric, int]) -> None: ...

    async def refund(self, taken: Sequence[Taken]) -> None: ...

    async def consumption(self, city_id: str) -> list[dict[str, int | str]]: ...


# One piece of a group commit: it runs inside the batch's transaction, at the batch's time.
_Work = Callable[[AsyncConnection, int], Awaitable[Any]]


class QuotaBook:
    """Quota windows over one database."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or Clock()
        self._queue: list[tuple[_Work, asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def admit(self, city_id: str, claims: Sequence[Claim]) -> Decision:
        """Take every claim from its budget's current window, or none of them when one does not fit."""
        if not claims:
            return Decision()
        ordered = sorted(claims, key=lambda c: (c.bucket, c.metric))

        async def work(conn: AsyncConnection, now: int) -> Decision:
            return await self._admit(conn, city_id, ordered, now)

        decision: Decision = await self._commit(work)
        return decision

    async def _admit(self, conn: AsyncConnection, city_id: str, claims: list[Claim], now: int) -> Decision:
        standings: dict[Metric, Standing] = {}
        taken: list[Taken] = []
        try:
            for claim in claims:
                start, end = window_of(claim.metric, now)
                used = await self._take(conn, city_id, claim, start, end, now)
                _tightest(standings, Standing(claim.metric, claim.limit, max(claim.limit - used, 0), end - now))
                taken.append(Taken(claim.bucket, claim.metric, start, claim.amount))
        except _Refused as refused:
            await _apply(conn, [(claim, -claim.amount) for claim in taken])
            _tightest(standings, refused.standing)
            return Decision(standings=standings, refused=refused.standing.metric)
        return Decision(tuple(taken), standings)

    async def _take(self, conn: AsyncConnection, city_id: str, claim: Claim, start: int, end: int, now: int) -> int:
        columns = quota_windows.c
        row = {"bucket": claim.bucket, "metric": claim.metric, "window_start_ms": start}
        fresh = self.db.insert(quota_windows).values(
            **row, city_id=city_id, used=0, window_end_ms=end, updated_at_ms=now
        )
        await conn.execute(fresh.on_conflict_do_nothing(index_elements=list(row)))
        key = and_(columns.bucket == claim.bucket, columns.metric == claim.metric, columns.window_start_ms == start)
        guarded = (
            update(quota_windows)
            .where(key, columns.used + claim.amount <= claim.limit)
            .values(used=columns.used + claim.amount, updated_at_ms=now)
            .returning(columns.used)
        )
        used = (await conn.execute(guarded)).scalar_one_or_none()
        if used is None:
            current = int((await conn.execute(select(columns.used).where(key))).scalar_one())
            raise _Refused(Standing(claim.metric, claim.limit, max(claim.limit - current, 0), end - now))
        return int(used)

    async def settle(self, taken: Sequence[Taken], used: Mapping[Metric, int]) -> None:
        """True the claims of metrics in `used` up to what the call used; the others stay as taken."""
        await self._move([(claim, used[claim.metric] - claim.amount) for claim in taken if claim.metric in used])

    async def refund(self, taken: Sequence[Taken]) -> None:
        """Give back everything a call took: it never reached its provider."""
        await self._move([(claim, -claim.amount) for claim in taken])

    async def _move(self, deltas: list[tuple[Taken, int]]) -> None:
        moves = [(claim, delta) for claim, delta in deltas if delta]
        if not moves:
            return

        async def work(conn: AsyncConnection, now: int) -> None:
            await _apply(conn, moves)

        await self._commit(work)

    async def _commit(self, work: _Work) -> Any:
        """Run `work` in the next group transaction; its result once that transaction has committed."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((work, done))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_all())
        return await done

    async def _commit_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._commit_batch(batch)
        finally:
            self._committer = None

    async def _commit_batch(self, batch: list[tuple[_Work, asyncio.Future[Any]]]) -> None:
        results: list[Any] = []
        try:
            async with self.db.begin() as conn:
                now = self.clock.now_ms()
                for work, _ in batch:
                    results.append(await work(conn, now))
        except Exception as failed:
            for _, done in batch:
                if not done.done():
                    done.set_exception(failed)
            return
        for (_, done), result in zip(batch, results, strict=True):
            if not done.done():
                done.set_result(result)

    async def consumption(self, city_id: str) -> list[dict[str, int | str]]:
        """The city's budgets in their current windows: bucket, metric, used and the window's bounds."""
        columns = quota_windows.c
        stmt = (
            select(columns.bucket, columns.metric, columns.used, columns.window_start_ms, columns.window_end_ms)
            .where(columns.city_id == city_id, columns.window_end_ms > self.clock.now_ms())
            .order_by(columns.bucket, columns.metric)
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        now = self.clock.now_ms()
        return [dict(row._mapping) for row in rows if row.window_start_ms <= now]

    async def advance_clock(self, ms: int) -> int:
        """`Clock.advance` (an async method, so the Quota actor serves it like every other)."""
        return self.clock.advance(ms)

    async def freeze_clock(self, at_ms: int | None) -> None:
        """`Clock.freeze`."""
        self.clock.freeze(at_ms)


async def _apply(conn: AsyncConnection, deltas: Sequence[tuple[Taken, int]]) -> None:
    """Move window rows by `deltas`, in one order (bucket, metric)."""
    columns = quota_windows.c
    for claim, delta in sorted(deltas, key=lambda move: (move[0].bucket, move[0].metric)):
        key = and_(
            columns.bucket == claim.bucket,
            columns.metric == claim.metric,
            columns.window_start_ms == claim.window_start_ms,
        )
        await conn.execute(update(quota_windows).where(key).values(used=columns.used + delta))
