"""`HoldRenewer`: keeps the holds of a process's live calls from being swept, one `renew` per user per round.

A hold expires a hold TTL after its reserve or last renewal, so the sweeper frees holds of calls that died
with their process. Live calls renew theirs every third of that TTL: two renewals can fail in a row before a
live call's hold expires. Each call is tracked by a weak reference, so a call dropped without settling or
releasing (an unexpected error) stops being renewed and its hold is swept like an abandoned one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref

from downcity.ledger.types import LedgerPort

logger = logging.getLogger(__name__)


class HoldRenewer:
    """Renews the holds of live calls every `interval_s`, batching each user's keys into one `renew` op."""

    def __init__(self, ledger: LedgerPort, interval_s: float) -> None:
        self.ledger = ledger
        self.interval_s = interval_s
        self._live: dict[tuple[str, str], weakref.ref[object]] = {}
        self._task: asyncio.Task[None] | None = None

    def track(self, owner: object, key: str, user_id: str) -> None:
        """Renew the hold `key` of `user_id` while `owner` (the call) is alive and not untracked."""
        self._live[(user_id, key)] = weakref.ref(owner)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="hold-renewer")

    def untrack(self, key: str, user_id: str) -> None:
        """Stop renewing the hold `key`: its call is settling or releasing it."""
        self._live.pop((user_id, key), None)

    def tracked(self) -> list[tuple[str, str]]:
        """The (user_id, key) pairs renewed next round."""
        return [pair for pair, owner in self._live.items() if owner() is not None]

    async def renew_now(self) -> None:
        """Renew every tracked hold once; keys the ledger no longer holds stop being tracked."""
        keys_by_user: dict[str, list[str]] = {}
        for user_id, key in self.tracked():
            keys_by_user.setdefault(user_id, []).append(key)
        self._live = {pair: owner for pair, owner in self._live.items() if owner() is not None}
        rounds = list(keys_by_user.items())
        results = await asyncio.gather(
            *(self.ledger.renew(keys, user_id) for user_id, keys in rounds), return_exceptions=True
        )
        for (user_id, keys), result in zip(rounds, results, strict=True):
            if isinstance(result, BaseException):
                # Kept: the next round retries well before the hold expires.
                logger.warning("renewing %d holds of user %r failed: %r", len(keys), user_id, result)
                continue
            for key in set(keys).difference(result):
                self.untrack(key, user_id)

    async def close(self) -> None:
        """Stop renewing."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while self._live:
            await asyncio.sleep(self.interval_s)
            await self.renew_now()
