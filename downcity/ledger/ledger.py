"""The Ledger: idempotent, serialized, group-committed billing in integer microcredits.

Every mutation goes through one asyncio queue. A single worker takes the ops in arrival order, applies
them to an in-memory cache of balances, writes the whole batch in one transaction and only then resolves
each caller's future, so an awaited op is durable. Idempotency keys are unique in the database, so a
replayed op (a client retry, an actor restart) returns its first result instead of charging twice.

Nothing overdraws: reserves and debits are refused (402) beyond the available balance, and a settle
charges at most its hold's amount when it has a hold, and at most the available balance in every case
(no hold, or a hold already released or swept). A capped settle reports the amount it was asked for in
`SettleResult.requested_microcredits` and logs a warning naming its key.

A hold expires `hold_expiry_s` after its reserve or its last `renew`; the sweeper releases expired holds.
Live calls renew their holds every third of that TTL, so only abandoned holds are swept.

A credit lease (`lease`) is a hold owned by an ingress replica: a block of at most `lease_max_fraction` of the
available balance, which the replica admits calls against in memory (`downcity.ledger.leases`). A settle on a
lease takes the charge out of it. A reserve refused while credit sits in leases recalls them (see `LeaseBoard`).

The cache speeds decisions but is never written back: each batch writes balance deltas, guarded so a
lowered available balance stays at or above zero, and checks that every row moved to the value it
decided from. When another writer moved a row (a second `Ledger` on the database, or a commit whose
acknowledgement was lost), the batch rolls back, reloads those accounts and decides again. The usual
deployment is still one writer per user: one `Ledger` per database, or one per shard
(`shard=(index, count)`) behind `ShardedLedger` / the Ray actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from downcity.errors import DowncityHTTPError, invalid
from downcity.ledger.checks import (
    check_account,
    check_amount,
    check_metadata,
    check_optional_text,
    check_text,
    normalize_usage,
)
from downcity.ledger.memory import LedgerMemory
from downcity.ledger.ops import Account, BatchState, LeaseBoard, Op, OpKind, Outcome, decide
from downcity.ledger.outbox import Outbox
from downcity.ledger.store import commit_one_trip, entry_row, load_batch, write_batch
from downcity.ledger.types import (
    Balance,
    HoldResult,
    LeaseResult,
    LedgerEntry,
    SettleResult,
    shard_of,
)
from downcity.metrics import Metrics, NoMetrics
from downcity.settings import DEFAULT_HOLD_EXPIRY_S, DEFAULT_LEASE_MAX_FRACTION
from downcity.store.database import Database
from downcity.store.database import now_ms as current_ms
from downcity.store.schema import balances, holds, ledger_entries

logger = logging.getLogger(__name__)

_MAX_HISTORY = 500
_MAX_REF_LENGTH = 200
_MAX_RENEWED_KEYS = 10_000
# Loads take row locks, so a redo after a stale write sees settled rows; more attempts mean a writer
# keeps creating the same new account under this Ledger.
_STALE_ATTEMPTS = 3
_MIN_SWEEP_INTERVAL_S = 1.0
_MAX_SWEEP_INTERVAL_S = 60.0


def _ledger_unavailable(exc: BaseException) -> DowncityHTTPError:
    return DowncityHTTPError(503, "ledger_unavailable", f"the ledger could not commit: {type(exc).__name__}")


class _StaleBalances(Exception):
    """A batch's balance write found rows another writer had moved; its transaction must roll back."""


class Ledger:
    """Idempotent, serialized, group-committed balance mutations over one `Database`."""

    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = 512,
        group_commit: bool = True,
        hold_expiry_s: int = DEFAULT_HOLD_EXPIRY_S,
        sweep_interval_s: float | None = None,
        shard: tuple[int, int] = (0, 1),
        metrics: Metrics | None = None,
        lease_max_fraction: float = DEFAULT_LEASE_MAX_FRACTION,
    ) -> None:
        if not 0 < lease_max_fraction <= 1:
            raise ValueError("lease_max_fraction must be in (0, 1]")
        self.db = db
        self.max_batch = max_batch if group_commit else 1
        self.group_commit = group_commit
        self.hold_expiry_s = hold_expiry_s
        default_interval = min(_MAX_SWEEP_INTERVAL_S, max(_MIN_SWEEP_INTERVAL_S, hold_expiry_s / 2))
        self.sweep_interval_s = sweep_interval_s if sweep_interval_s is not None else default_interval
        self.shard = shard
        self.metrics = metrics or NoMetrics()
        self._memory = LedgerMemory()
        self._leases = LeaseBoard(max_fraction=lease_max_fraction)
        self._queue: asyncio.Queue[Op | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Start the batch worker and the hold sweeper."""
        if self._closed:
            raise RuntimeError("this Ledger was closed; create a new one")
        if self._worker is not None:
            return
        await self._load_leases()
        self._worker = asyncio.create_task(self._run(), name="ledger-worker")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="ledger-sweeper")

    async def close(self) -> None:
        """Finish every queued op, then stop the worker and the sweeper."""
        if self._closed:
            return
        self._closed = True
        # The stop sentinel goes behind the queued ops before anything yields, so no op can queue after it.
        if self._worker is not None:
            self._queue.put_nowait(None)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._worker is not None:
            await self._worker

    def owns(self, user_id: str) -> bool:
        """Whether this ledger's shard is the one that mutates `user_id`."""
        index, count = self.shard
        return count == 1 or shard_of(user_id, count) == index

    async def credit(self, key: str, user_id: str, amount: int, note: str | None = None) -> LedgerEntry:
        """Add `amount` to the user's balance."""
        entry = await self._mutation("credit", key, user_id, check_amount(amount, positive=True), note=note)
        return cast(LedgerEntry, entry)

    async def debit(self, key: str, user_id: str, amount: int, note: str | None = None) -> LedgerEntry:
        """Take `amount` from the user's balance; 402 when the available balance is short."""
        entry = await self._mutation("debit", key, user_id, check_amount(amount, positive=True), note=note)
        return cast(LedgerEntry, entry)

    async def reserve(self, key: str, user_id: str, amount: int) -> HoldResult:
        """Hold `amount` for a call; 402 when balance minus held is below it."""
        hold = await self._mutation("reserve", key, user_id, check_amount(amount, positive=False))
        return cast(HoldResult, hold)

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
        """Charge the final amount, settle the hold with this key and record usage, in one transaction.

        With `lease`, the call was admitted on that credit lease with a share of `lease_hold`: the charge,
        capped by that share, comes out of the lease.
        """
        result = await self._mutation(
            "settle",
            key,
            user_id,
            check_amount(amount, positive=False),
            ref=check_optional_text(ref, "ref", _MAX_REF_LENGTH),
            note=note,
            metadata=check_metadata(metadata),
            usage=normalize_usage(usage) if usage is not None else None,
            lease=check_text(lease, "lease") if lease is not None else None,
            lease_hold=check_amount(lease_hold, positive=False),
        )
        return cast(SettleResult, result)

    async def lease(self, key: str, user_id: str, owner: str, amount: int, minimum: int) -> LeaseResult:
        """Grant the credit lease `key` to `owner`, or top it up, by up to `amount` (nothing below `minimum`)."""
        result = await self._mutation(
            "lease",
            key,
            user_id,
            check_amount(amount, positive=True),
            owner=check_text(owner, "owner"),
            minimum=check_amount(minimum, positive=False),
        )
        return cast(LeaseResult, result)

    async def release(
        self, key: str, *, user_id: str | None = None, usage: dict[str, Any] | None = None
    ) -> HoldResult | None:
        """Release the hold with this key without charging, recording the (error) usage row."""
        if user_id is not None:
            self._check_owner(user_id)
        elif self.shard[1] > 1:
            raise invalid("user_id is required to release on a sharded ledger", field="user_id")
        row = normalize_usage(usage) if usage is not None else None
        op = Op("release", self._future(), check_text(key, "idempotency_key"), user_id, usage=row)
        return cast(HoldResult | None, await self._submit(op))

    async def renew(self, keys: list[str], user_id: str) -> list[str]:
        """Extend the expiry of the user's holds still `held` by a hold TTL from now; returns those keys."""
        self._check_owner(user_id)
        if not isinstance(keys, list) or len(keys) > _MAX_RENEWED_KEYS:
            raise invalid(f"keys must be a list of at most {_MAX_RENEWED_KEYS} keys", field="keys")
        renewed = tuple(dict.fromkeys(check_text(key, "keys") for key in keys))
        if not renewed:
            return []
        held: list[str] = await self._submit(Op("renew", self._future(), user_id=user_id, renewed=renewed))
        return held

    async def record_usage(self, usage: dict[str, Any]) -> None:
        """Record a usage row for an unbilled call."""
        await self._submit(Op("usage", self._future(), usage=normalize_usage(usage)))

    async def sweep_expired_holds(self, now_ms: int | None = None) -> int:
        """Release every hold whose expiry is before `now_ms`; returns how many were released."""
        stamp = now_ms if now_ms is not None else current_ms()
        result: int = await self._submit(Op("sweep", self._future(), now_ms=stamp))
        return result

    async def balance(self, user_id: str) -> Balance:
        """The user's committed balance."""
        check_account(user_id)
        async with self.db.connect() as conn:
            row = (await conn.execute(select(balances).where(balances.c.user_id == user_id))).first()
        if row is None:
            return Balance(user_id=user_id, balance=0, held=0, available=0)
        credits, held = row.credits_microcredits, row.held_microcredits
        return Balance(user_id=user_id, balance=credits, held=held, available=credits - held)

    async def history(self, user_id: str, limit: int = 50, before_id: int | None = None) -> list[LedgerEntry]:
        """The user's committed entries, newest first, optionally before an entry id."""
        check_account(user_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_HISTORY:
            raise invalid(f"limit must be an integer from 1 to {_MAX_HISTORY}", field="limit")
        query = select(ledger_entries).where(ledger_entries.c.user_id == user_id)
        if before_id is not None:
            if isinstance(before_id, bool) or not isinstance(before_id, int):
                raise invalid("before_id must be an integer", field="before_id")
            query = query.where(ledger_entries.c.id < before_id)
        query = query.order_by(ledger_entries.c.id.desc()).limit(limit)
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [entry_row(row).to_entry() for row in rows]

    async def _mutation(self, kind: OpKind, key: str, user_id: str, amount: int, **fields: Any) -> Any:
        check_text(key, "idempotency_key")
        self._check_owner(user_id)
        note = check_optional_text(fields.pop("note", None), "note")
        return await self._submit(Op(kind, self._future(), key, user_id, amount, note=note, **fields))

    def _check_owner(self, user_id: str) -> None:
        check_account(user_id)
        if not self.owns(user_id):
            raise ValueError(f"user {user_id!r} belongs to another ledger shard than {self.shard}")

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, op: Op) -> Any:
        if self._worker is None or self._closed:
            raise RuntimeError("Ledger is not running: call start() first")
        self._queue.put_nowait(op)
        return await op.future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = self._fill(batch) if self.group_commit else False
            started = time.perf_counter()
            await self._process(batch)
            elapsed = time.perf_counter() - started
            self.metrics.ledger_batch(
                shard=self.shard[0], ops=len(batch), queue_depth=self._queue.qsize(), commit_s=elapsed
            )
            if stop:
                return

    def _fill(self, batch: list[Op]) -> bool:
        """Add the ops queued behind the first, up to max_batch, without waiting for more; True when closing.

        Ops that arrive while a batch commits queue up and form the next batch, so a batch grows with the load
        and a lone op never waits for company."""
        while len(batch) < self.max_batch:
            try:
                op = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return False
            if op is None:
                return True
            batch.append(op)
        return False

    async def _process(self, batch: list[Op]) -> None:
        try:
            await self._commit(batch)
        except Exception as exc:
            if len(batch) == 1:
                await self._retry_alone(batch[0], exc)
                return
            logger.warning("ledger batch of %d failed (%r); retrying its ops one by one", len(batch), exc)
            for op in batch:
                try:
                    await self._commit([op])
                except Exception as single_exc:
                    await self._retry_alone(op, single_exc)

    async def _retry_alone(self, op: Op, exc: Exception) -> None:
        """A unique-key race (another writer got there first) resolves on a fresh read; else it fails."""
        if isinstance(exc, IntegrityError):
            try:
                await self._commit([op])
                return
            except Exception as again:
                exc = again
        logger.error("ledger op %s %r failed: %r", op.kind, op.key, exc)
        if not op.future.done():
            op.future.set_exception(_ledger_unavailable(exc))

    async def _commit(self, ops: list[Op]) -> None:
        state, outcomes = await self._commit_in_one_trip(ops) or await self._commit_after_loading(ops)
        self._memory.remember(state, ops)
        for hold in state.holds.values():
            self._leases.note(hold)
        for op, outcome in zip(ops, outcomes, strict=True):
            if op.future.done():
                continue
            if isinstance(outcome, DowncityHTTPError):
                op.future.set_exception(outcome)
            else:
                op.future.set_result(outcome())

    def _state(self, accounts: dict[str, Account]) -> BatchState:
        return BatchState(accounts, current_ms(), hold_ttl_ms=self.hold_expiry_s * 1000, leases=self._leases)

    async def _load_leases(self) -> None:
        """Learn the live leases of this shard's accounts, so a restarted Ledger can still recall them."""
        query = select(holds).where(holds.c.status == "held", holds.c.owner.is_not(None))
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            if self.owns(row.user_id):
                self._leases.live.setdefault(row.user_id, set()).add(row.idempotency_key)

    async def _commit_in_one_trip(self, ops: list[Op]) -> tuple[BatchState, list[Outcome]] | None:
        """Decide from what this Ledger knows and write in one statement; None when the batch must load."""
        if self.db.dialect != "postgresql":
            return None
        assumed_new = self._memory.unseen_keys(ops)
        if assumed_new is None:
            return None
        state = self._state(self._memory.copy_accounts(ops))
        self._memory.recall(state, ops)
        outcomes = [decide(state, op) for op in ops]
        try:
            committed = await commit_one_trip(self.db, state, assumed_new)
        except BaseException:
            # The COMMIT may have landed before the error: nothing the batch touched can be trusted.
            self._memory.forget(state, ops)
            raise
        if not committed:
            # Possibly stale accounts: the load path reads them again, under a row lock.
            self._memory.forget_accounts(state)
            return None
        return state, outcomes

    async def _commit_after_loading(self, ops: list[Op]) -> tuple[BatchState, list[Outcome]]:
        """Load the batch's keys and uncached accounts, decide, and write, in one transaction."""
        for _ in range(_STALE_ATTEMPTS):
            state = self._state(self._memory.accounts)
            try:
                async with self.db.begin() as conn:
                    await load_batch(self.db, conn, state, ops, self.owns)
                    outcomes = [decide(state, op) for op in ops]
                    if not await write_batch(self.db, conn, state):
                        raise _StaleBalances
            except _StaleBalances:
                # Rolled back: the next attempt loads the accounts another writer moved and decides again.
                self._memory.forget_accounts(state)
                continue
            except BaseException:
                # Rolled back, or committed with a lost acknowledgement: forget all the batch touched.
                self._memory.forget(state, ops)
                raise
            return state, outcomes
        raise RuntimeError(f"balances kept moving under the ledger for {_STALE_ATTEMPTS} attempts")

    async def _drain_outbox(self) -> None:
        try:
            drained = await Outbox(self.db).drain(self, self.owns)
        except Exception as exc:
            logger.warning("settle outbox drain failed: %r", exc)
            return
        if drained:
            logger.info("applied %d settles from the outbox", drained)

    async def _sweep_forever(self) -> None:
        # The outbox drains before every sweep: an owed charge consumes its hold before the hold can lapse.
        await self._drain_outbox()
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            await self._drain_outbox()
            try:
                released = await self.sweep_expired_holds()
            except Exception as exc:
                logger.warning("hold sweep failed: %r", exc)
                continue
            if released:
                logger.info("released %d expired holds", released)
