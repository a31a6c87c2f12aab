"""The `JobManager`: polls every unfinished image job to a terminal state and bills its first success.

It keeps a due-time index (a heap) of every job that still has work and sleeps until the earliest is due,
so thousands of waiting jobs cost nothing. Due jobs queue per provider; up to the provider's concurrency cap
they are leased in the database (one statement for all jobs due together) before the provider's
`image_fetch` is called, so two managers (or a retried call) never poll one job at once. Poll results are
written in group commits. It honours the provider's `poll_after_ms`, backs off exponentially with jitter
after errors and fails jobs pending past `image_max_pending_duration_ms` without calling the provider. A
job's first success is stored first and billed after, through the Ledger under the key `image:<job_id>`, so
a repeat never bills twice and a crash between the two is finished on recovery (see `downcity.jobs.store`
for the work marker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from downcity.ai.context import Context
from downcity.ai.federation import Federation
from downcity.calls.charge import resolve_charge
from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import ActionRequest
from downcity.gateway.ports import ProviderGateway
from downcity.jobs.record import UPSTREAM_TIMEOUT, JobRecord, Progress, outcome_fields
from downcity.jobs.schedule import DueIndex, backoff_delay_ms
from downcity.jobs.store import JobStore, ProgressWriter
from downcity.jobs.submit import image_hold_key
from downcity.ledger.renewer import HoldRenewer
from downcity.ledger.types import LedgerPort
from downcity.settings import Settings
from downcity.store.database import now_ms
from downcity.types import TERMINAL_JOB_STATUSES, ChargeDraft, UIMessage

logger = logging.getLogger(__name__)

# A job whose work is overdue by this much was missed (lost notify, dead manager): the scan picks it up.
OVERDUE_GRACE_MS = 5_000
SCAN_INTERVAL_S = 5.0
_WAIT_RECHECK_S = 1.0
_STOP_GRACE_S = 5.0
_LAG_SAMPLES = 10_000
_LEASE_BATCH = 256


@dataclass
class _Lane:
    """One provider's jobs waiting for a fetch slot, and how many slots are taken."""

    ready: deque[str] = field(default_factory=deque)
    active: int = 0
    pumping: bool = False


class JobManager:
    """Schedules `image_fetch` for every unfinished job until it succeeds (and is billed) or fails."""

    def __init__(
        self,
        federation: Federation,
        store: JobStore,
        gateway: ProviderGateway,
        ledger: LedgerPort,
        settings: Settings,
        *,
        owner: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.federation = federation
        self.store = store
        self.gateway = gateway
        self.ledger = ledger
        self.settings = settings
        self.owner = owner or f"jobs-{uuid.uuid4().hex[:16]}"
        self._rng = rng or random.Random()
        self._index = DueIndex()
        self._wake = asyncio.Event()
        self._inflight: set[str] = set()
        self._errors: dict[str, int] = {}
        self._lanes: dict[str, _Lane] = {}
        self._writer = ProgressWriter(store)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._lags: deque[int] = deque(maxlen=_LAG_SAMPLES)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped = asyncio.Event()
        # A pending job's hold must outlive the hold TTL: renewed while this manager works on the job.
        self._renewer = HoldRenewer(ledger, settings.hold_expiry_s / 3)

    async def start(self) -> None:
        """Load every job that still has work from the database, then start scheduling."""
        if self._loops:
            return
        for job_id, provider_id, due_ms in await self.store.with_work():
            self._index.push(job_id, provider_id, due_ms)
        self._loops = [
            asyncio.create_task(self._schedule_forever(), name="jobs-scheduler"),
            asyncio.create_task(self._scan_forever(), name="jobs-overdue-scan"),
        ]

    async def stop(self) -> None:
        """Stop scheduling, let in-flight polls finish (briefly), then cancel what is left.

        Nothing is cancelled while it may be inside a `JobStore` call: on SQLite a cancellation that lands in the
        connection checkout (SQLAlchemy awaits aiosqlite to set AUTOCOMMIT in `engine_connect`) escapes
        `Connection.__init__` and orphans the pooled connection until the garbage collector finds it.
        """
        self._stopping = True
        self._stopped.set()  # the overdue scan returns after its current query
        if self._loops:
            self._loops[0].cancel()  # the scheduler, which never touches the database
        # Also wait for the `_work` a finishing `_pump` spawns meanwhile, not only for the tasks running now.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_GRACE_S
        while (pending := {t for t in (*self._loops, *self._tasks) if not t.done()}) and loop.time() < deadline:
            await asyncio.wait(pending, timeout=deadline - loop.time())
        for task in [*self._loops, *self._tasks]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops = []
        # A poll cancelled while its progress was being written leaves that write running: it ends here.
        await self._writer.close()
        await self._renewer.close()

    async def notify(self, job_id: str, provider_id: str, due_ms: int) -> None:
        """Schedule a job created or changed elsewhere."""
        self.schedule(job_id, provider_id, due_ms)

    def schedule(self, job_id: str, provider_id: str, due_ms: int) -> None:
        """Put a job in the due index, waking the scheduler when it is the new earliest."""
        earliest = self._index.next_due()
        self._index.push(job_id, provider_id, due_ms)
        if earliest is None or due_ms < earliest:
            self._wake.set()

    def stats(self) -> dict[str, Any]:
        """Scheduled and in-flight counts, and the scheduling lag (poll start minus due time) in ms."""
        lags = sorted(self._lags)

        def percentile(share: float) -> int | None:
            return lags[min(len(lags) - 1, int(share * len(lags)))] if lags else None

        return {
            "scheduled": len(self._index),
            "in_flight": len(self._inflight),
            "polls": len(lags),
            "lag_p50_ms": percentile(0.50),
            "lag_p99_ms": percentile(0.99),
        }

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """The job once finalized, or as it stands after `timeout_s`; None for an unknown id."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            record = await self.store.get(job_id)
            remaining = deadline - loop.time()
            if record is None or record.finalized or remaining <= 0:
                return record
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(job_id, []).append(future)
            try:
                await asyncio.wait_for(future, min(remaining, _WAIT_RECHECK_S))
            except TimeoutError:
                pass
            finally:
                waiting = self._waiters.get(job_id, [])
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    self._waiters.pop(job_id, None)

    async def _schedule_forever(self) -> None:
        while True:
            self._wake.clear()
            for job_id, provider_id in self._index.pop_due(now_ms()):
                self._dispatch(job_id, provider_id)
            next_due = self._index.next_due()
            timeout = None if next_due is None else max(0, next_due - now_ms()) / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _scan_forever(self) -> None:
        while not self._stopping:
            try:
                await self._keep_holds()
            except Exception:
                logger.exception("tracking the holds of pending jobs failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), SCAN_INTERVAL_S)
            if self._stopping:
                return
            try:
                overdue = await self.store.with_work(due_before_ms=now_ms() - OVERDUE_GRACE_MS)
            except Exception:
                logger.exception("the overdue job scan failed")
                continue
            for job_id, provider_id, due_ms in overdue:
                if job_id not in self._inflight:
                    self.schedule(job_id, provider_id, due_ms)

    async def _keep_holds(self) -> None:
        """Renew the hold of every job with work left, from the first scan after its create (well within a TTL)."""
        for job_id, city_id, user_id in await self.store.owners_with_work():
            account = self.federation.accounts.account_id(city_id, user_id)
            self._renewer.track(self, image_hold_key(job_id), account)

    def _dispatch(self, job_id: str, provider_id: str) -> None:
        if job_id in self._inflight:
            return
        self._inflight.add(job_id)
        lane = self._lanes.setdefault(provider_id, _Lane())
        lane.ready.append(job_id)
        if not lane.pumping:
            self._spawn(self._pump(provider_id, lane))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, provider_id: str, lane: _Lane) -> None:
        """Lease ready jobs in batches, up to the provider's concurrency cap, and start their work."""
        lane.pumping = True
        cap = self.settings.image_fetch_concurrency
        try:
            while lane.ready and lane.active < cap and not self._stopping:
                batch = [lane.ready.popleft() for _ in range(min(cap - lane.active, len(lane.ready), _LEASE_BATCH))]
                lane.active += len(batch)
                try:
                    leased = await self.store.acquire(batch, self.owner, now_ms(), self.settings.image_lease_ms)
                except Exception:
                    logger.exception("leasing %d jobs failed; retrying with backoff", len(batch))
                    for job_id in batch:
                        self._done(job_id, provider_id, lane, now_ms() + self._error_delay(job_id))
                    continue
                for job_id in batch:
                    self._spawn(self._work(job_id, provider_id, lane, leased.get(job_id)))
        finally:
            lane.pumping = False

    async def _work(self, job_id: str, provider_id: str, lane: _Lane, record: JobRecord | None) -> None:
        try:
            next_due = await (self._process(record) if record is not None else self._recheck(job_id, now_ms()))
        except Exception:
            logger.exception("job %s: processing failed; retrying with backoff", job_id)
            next_due = now_ms() + self._error_delay(job_id)
        self._done(job_id, provider_id, lane, next_due)

    def _done(self, job_id: str, provider_id: str, lane: _Lane, next_due: int | None) -> None:
        lane.active -= 1
        self._inflight.discard(job_id)
        # Only after leaving the in-flight set: a due entry for an in-flight job is dropped.
        if next_due is not None:
            self.schedule(job_id, provider_id, next_due)
        if lane.ready and not lane.pumping and not self._stopping:
            self._spawn(self._pump(provider_id, lane))

    async def _process(self, record: JobRecord) -> int | None:
        """Work on one leased job; returns when it is next due, or None when this manager is done with it."""
        if record.terminal:
            await self._finalize(record)
            return None
        deadline = record.created_at_ms + self.settings.image_max_pending_duration_ms
        if now_ms() >= deadline:
            await self._finish(record, {"status": "failed", "error": UPSTREAM_TIMEOUT, "message": UPSTREAM_TIMEOUT})
            return None
        return await self._poll(record, deadline)

    async def _recheck(self, job_id: str, now: int) -> int | None:
        """A job that could not be leased: when to look at it again, if ever."""
        current = await self.store.get(job_id)
        if current is None or current.next_poll_at_ms is None:
            return None
        lease_until = current.lease_until_ms
        if current.lease_owner not in (None, self.owner) and lease_until is not None and lease_until > now:
            # Another manager holds it; look again when its lease would lapse, in case that manager died.
            return lease_until
        return max(current.next_poll_at_ms, now + 50)

    async def _poll(self, record: JobRecord, deadline: int) -> int | None:
        model = self.federation.models.get(record.model_id)
        if model is None:
            error = f"model '{record.model_id}' is no longer available"
            await self._finish(record, {"status": "failed", "error": error, "message": error})
            return None
        request = ActionRequest(
            request_id=record.job_id,
            pathway="image",
            model_id=model.id,
            input=record.input,
            user=record.user_info(),
            city=record.city_info(),
            job=record.to_context(),
        )
        if record.next_poll_at_ms is not None:
            self._lags.append(now_ms() - record.next_poll_at_ms)
        try:
            result = await self.gateway.image_fetch(record.provider_id, request)
        except DowncityHTTPError as error:
            logger.info("job %s: image_fetch failed (%s); backing off", record.job_id, error.type)
            next_due = min(now_ms() + self._error_delay(record.job_id), deadline)
            await self._progress(record, next_due, record.status, record.state, None)
            return next_due
        self._errors.pop(record.job_id, None)
        outcome = outcome_fields(result)
        state = {**record.state, "metadata": result.metadata} if result.metadata else record.state
        if outcome["status"] in TERMINAL_JOB_STATUSES:
            await self._finish(replace(record, state=state), outcome)
            return None
        wait_ms = result.poll_after_ms if result.poll_after_ms is not None else self.settings.image_poll_interval_ms
        next_due = min(now_ms() + wait_ms, deadline)
        await self._progress(record, next_due, outcome["status"], state, result.poll_after_ms)
        return next_due

    async def _progress(
        self, record: JobRecord, next_due: int, status: str, state: dict[str, Any], poll_after_ms: int | None
    ) -> None:
        await self._writer.save(Progress(record.job_id, self.owner, next_due, status, state, poll_after_ms, now_ms()))

    def _error_delay(self, job_id: str) -> int:
        errors = self._errors[job_id] = self._errors.get(job_id, 0) + 1
        settings = self.settings
        return backoff_delay_ms(errors, settings.image_backoff_base_ms, settings.image_backoff_max_ms, self._rng)

    async def _finish(self, record: JobRecord, outcome: dict[str, Any]) -> None:
        """Store the terminal outcome (the first write wins), then bill or record it."""
        stored = await self.store.save_terminal(replace(record, **outcome), now_ms())
        await self._finalize(stored)

    async def _finalize(self, record: JobRecord) -> None:
        self._renewer.untrack(image_hold_key(record.job_id), self._account(record))
        if not record.finalized:
            amount = await self._settle(record)
            await self.store.mark_finalized(record.job_id, amount, now_ms())
        self._errors.pop(record.job_id, None)
        for future in self._waiters.pop(record.job_id, []):
            if not future.done():
                future.set_result(None)

    def _account(self, record: JobRecord) -> str:
        return self.federation.accounts.account_id(record.city_id, record.user_id)

    async def _settle(self, record: JobRecord) -> int:
        """Charge a succeeded job once from its hold (key `image:<job_id>`), else release the hold; the charge."""
        usage = record.usage_row()
        charge = self._price(record) if record.status == "succeeded" else None
        amount = charge.amount_microcredits if charge is not None else 0
        key = image_hold_key(record.job_id)
        if charge is None or amount == 0:
            await self.ledger.release(key, user_id=self._account(record), usage=usage)
            return 0
        settled = await self.ledger.settle(
            key,
            self._account(record),
            amount,
            ref=charge.ref or record.job_id,
            note=charge.note,
            metadata=charge.metadata or None,
            usage=usage,
        )
        return settled.entry.amount_microcredits if settled.entry is not None else 0

    def _price(self, record: JobRecord) -> ChargeDraft | None:
        model = self.federation.models.get(record.model_id)
        if model is None or record.result is None:
            logger.warning("job %s: no model or result to price; not charged", record.job_id)
            return None
        user, city = record.user_info(), record.city_info()
        ctx = Context(
            input=dict(record.input),
            user=user,
            city=city,
            model=model,
            pathway="image",
            request_id=record.job_id,
            job=record.to_context(),
        )
        ctx.duration_ms = (record.finished_at_ms or record.updated_at_ms) - record.created_at_ms
        return resolve_charge(None, model, model.provider, ctx, UIMessage.model_validate(record.result))
