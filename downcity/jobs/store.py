"""`JobStore`: the `async_jobs` table — inserts, owner reads, leases, due scans and the admin listing.

A job's `next_poll_at_ms` is its work marker: set while the JobManager still owes it something (a poll
while pending; the charge or usage row once terminal) and NULL once it is finalized. `charge_microcredits`
is NULL until a terminal job is finalized. A lease (`lease_owner`, `lease_until_ms`) lets one manager at a
time work on a job.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from sqlalchemy import Integer, and_, bindparam, func, or_, select, update

from downcity.jobs.record import ACTIVE_STATUSES, ALL_STATUSES, JobRecord, Progress
from downcity.store.database import Database
from downcity.store.schema import async_jobs
from downcity.types import TERMINAL_JOB_STATUSES

MAX_LIST_LIMIT = 500
_IS_ACTIVE = async_jobs.c.status.in_(ACTIVE_STATUSES)
_IS_TERMINAL = async_jobs.c.status.in_(sorted(TERMINAL_JOB_STATUSES))
# Built once: constructing a statement costs more than running it, and these two run on every poll.
_ACQUIRE = (
    update(async_jobs)
    .where(
        async_jobs.c.job_id.in_(bindparam("b_job_ids", expanding=True)),
        async_jobs.c.next_poll_at_ms.is_not(None),
        async_jobs.c.next_poll_at_ms <= bindparam("b_now"),
        or_(
            async_jobs.c.lease_until_ms.is_(None),
            async_jobs.c.lease_until_ms <= bindparam("b_now"),
            async_jobs.c.lease_owner == bindparam("b_owner"),
        ),
    )
    .values(lease_owner=bindparam("b_owner"), lease_until_ms=bindparam("b_until"))
    .returning(*async_jobs.c)
)
_PROGRESS = (
    update(async_jobs)
    .where(
        async_jobs.c.job_id == bindparam("b_job_id"),
        async_jobs.c.lease_owner == bindparam("b_owner"),
        # Not `_IS_ACTIVE`: an IN list cannot be part of an executemany.
        *(async_jobs.c.status != status for status in sorted(TERMINAL_JOB_STATUSES)),
    )
    .values(
        attempts=async_jobs.c.attempts + 1,
        next_poll_at_ms=bindparam("b_next"),
        status=bindparam("b_status"),
        state=bindparam("b_state"),
        poll_after_ms=func.coalesce(bindparam("b_poll_after", type_=Integer), async_jobs.c.poll_after_ms),
        lease_owner=None,
        lease_until_ms=None,
        updated_at_ms=bindparam("b_now"),
    )
)


class JobStore:
    """Reads and conditional writes of `async_jobs` over one `Database`.

    Every operation is one statement, atomic on its own, so it runs in autocommit mode: one round trip
    instead of BEGIN, the statement and COMMIT.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._engine = db.engine.execution_options(isolation_level="AUTOCOMMIT")

    async def insert(self, record: JobRecord) -> JobRecord:
        """Store a new job; with an idempotency key already used, the job stored first is returned."""
        values = asdict(record)
        statement = self.db.insert(async_jobs).values(**values)
        if record.idempotency_key is not None:
            statement = statement.on_conflict_do_nothing(index_elements=["idempotency_key"])
        async with self._engine.connect() as conn:
            inserted = (await conn.execute(statement)).rowcount
        if inserted:
            return record
        existing = await self.get_by_key(record.idempotency_key or "")
        if existing is None:
            raise RuntimeError(f"job insert for key {record.idempotency_key!r} neither stored nor found")
        return existing

    async def get(self, job_id: str) -> JobRecord | None:
        """The job with this id."""
        return await self._one(async_jobs.c.job_id == job_id)

    async def get_for_owner(self, job_id: str, city_id: str, user_id: str) -> JobRecord | None:
        """The job with this id when it belongs to this city and user, else None."""
        return await self._one(
            and_(
                async_jobs.c.job_id == job_id,
                async_jobs.c.city_id == city_id,
                async_jobs.c.user_id == user_id,
            )
        )

    async def get_by_key(self, idempotency_key: str) -> JobRecord | None:
        """The job created with this idempotency key."""
        return await self._one(async_jobs.c.idempotency_key == idempotency_key)

    async def _one(self, condition: Any) -> JobRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(async_jobs).where(condition))).mappings().first()
        return JobRecord.from_row(row) if row is not None else None

    async def acquire(self, job_ids: list[str], owner: str, now_ms: int, lease_ms: int) -> dict[str, JobRecord]:
        """Lease those of `job_ids` that have work due by `now_ms` and no other live lease, by id.

        The owner's own lease counts as free: a manager guards its in-flight jobs in memory, and a
        restarted manager under the same name takes its old leases back at once.
        """
        params = {"b_job_ids": job_ids, "b_owner": owner, "b_now": now_ms, "b_until": now_ms + lease_ms}
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_ACQUIRE, params)).mappings().all()
        return {row["job_id"]: JobRecord.from_row(row) for row in rows}

    async def save_progress(self, polls: list[Progress]) -> None:
        """Record polls of pending jobs and release their leases, in one transaction.

        A job whose lease another manager has taken meanwhile is left as that manager wrote it.
        """
        params = [
            {
                "b_job_id": poll.job_id,
                "b_owner": poll.owner,
                "b_next": poll.next_poll_at_ms,
                "b_status": poll.status,
                "b_state": poll.state,
                "b_poll_after": poll.poll_after_ms,
                "b_now": poll.updated_at_ms,
            }
            for poll in polls
        ]
        async with self._engine.connect() as conn:
            await conn.execute(_PROGRESS, params)

    async def save_terminal(self, record: JobRecord, now_ms: int) -> JobRecord:
        """Make a pending job terminal with `record`'s status, result and error; the first write wins.

        Returns the stored job, which is another manager's outcome when it got there first.
        """
        statement = (
            update(async_jobs)
            .where(async_jobs.c.job_id == record.job_id, _IS_ACTIVE)
            .values(
                status=record.status,
                result=record.result,
                error=record.error,
                message=record.message,
                state=record.state,
                attempts=async_jobs.c.attempts + 1,
                next_poll_at_ms=now_ms,
                lease_owner=None,
                lease_until_ms=None,
                updated_at_ms=now_ms,
                finished_at_ms=now_ms,
            )
            .returning(*async_jobs.c)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(statement)).mappings().first()
        if row is not None:
            return JobRecord.from_row(row)
        stored = await self.get(record.job_id)
        if stored is None:
            raise RuntimeError(f"job {record.job_id!r} vanished while being finished")
        return stored

    async def mark_finalized(self, job_id: str, charge_microcredits: int, now_ms: int) -> None:
        """Record the charge of a terminal job (0 when free or failed) and clear its work marker."""
        statement = (
            update(async_jobs)
            .where(async_jobs.c.job_id == job_id, _IS_TERMINAL)
            .values(
                charge_microcredits=charge_microcredits,
                next_poll_at_ms=None,
                lease_owner=None,
                lease_until_ms=None,
                updated_at_ms=now_ms,
            )
        )
        async with self._engine.connect() as conn:
            await conn.execute(statement)

    async def with_work(self, due_before_ms: int | None = None) -> list[tuple[str, str, int]]:
        """`(job_id, provider_id, next_poll_at_ms)` of every job with work, optionally only overdue ones."""
        condition = and_(async_jobs.c.status.in_(ALL_STATUSES), async_jobs.c.next_poll_at_ms.is_not(None))
        if due_before_ms is not None:
            condition = and_(condition, async_jobs.c.next_poll_at_ms < due_before_ms)
        query = select(async_jobs.c.job_id, async_jobs.c.provider_id, async_jobs.c.next_poll_at_ms).where(condition)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(row.job_id, row.provider_id, row.next_poll_at_ms) for row in rows]

    async def owners_with_work(self) -> list[tuple[str, str, str]]:
        """`(job_id, city_id, user_id)` of every job with work left: the jobs whose holds must stay alive."""
        condition = and_(async_jobs.c.status.in_(ALL_STATUSES), async_jobs.c.next_poll_at_ms.is_not(None))
        query = select(async_jobs.c.job_id, async_jobs.c.city_id, async_jobs.c.user_id).where(condition)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(row.job_id, row.city_id, row.user_id) for row in rows]

    async def list(
        self,
        *,
        status: str | None = None,
        city_id: str | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        """Jobs matching every given filter, newest first."""
        query = select(async_jobs)
        if status is not None:
            query = query.where(async_jobs.c.status == status)
        if city_id is not None:
            query = query.where(async_jobs.c.city_id == city_id)
        if user_id is not None:
            query = query.where(async_jobs.c.user_id == user_id)
        query = query.order_by(async_jobs.c.created_at_ms.desc(), async_jobs.c.job_id).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [JobRecord.from_row(row) for row in rows]


class ProgressWriter:
    """Group-commits poll progress: the saves that arrive while one transaction runs share the next."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._pending: list[tuple[Progress, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def save(self, poll: Progress) -> None:
        """Write one poll's progress; returns once it is committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((poll, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def close(self) -> None:
        """Wait for the write in progress, so no transaction outlives the manager that started it."""
        if self._flusher is not None:
            # `_flush` keeps every failure on the futures of the saves it was writing: it never raises.
            await self._flusher

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self.store.save_progress([poll for poll, _ in batch])
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
