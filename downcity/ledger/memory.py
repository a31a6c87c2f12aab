"""What a Ledger remembers between batches: the accounts it loaded and the committed state of recent keys.

Both only speed decisions up; nothing here is ever written back. After a failed commit the entries a batch
touched are forgotten, so the next batch reads them from the database instead of trusting them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from downcity.ledger.ops import Account, BatchState, EntryRow, HoldRow, Op

_MAX_CACHED_USERS = 100_000
_MAX_KNOWN_KEYS = 100_000


def _batch_keys(ops: list[Op]) -> list[str]:
    return [key for op in ops for key in op.touched_keys()]


class LedgerMemory:
    """A per-process account cache and an LRU of the committed hold and entry of recently used keys."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self._known: OrderedDict[str, tuple[HoldRow | None, EntryRow | None]] = OrderedDict()

    def unseen_keys(self, ops: list[Op]) -> list[str] | None:
        """The batch's keys never seen, when the batch can be decided from memory; None when it must load.

        Deciding from memory needs every account cached (loaded once under a row lock) and no sweep, whose
        expired holds only a query can find. Unseen keys are assumed new and checked by the write itself.
        """
        unseen: list[str] = []
        for op in ops:
            if op.kind == "sweep" or (op.user_id is not None and op.user_id not in self.accounts):
                return None
            for key in op.touched_keys():
                known = self._known.get(key)
                if known is None:
                    unseen.append(key)
                elif known[0] is not None and known[0].user_id not in self.accounts:
                    return None
        return unseen

    def copy_accounts(self, ops: list[Op]) -> dict[str, Account]:
        """Copies of the cached accounts the batch reads, so a rolled-back attempt leaves the cache as it was."""
        users = {op.user_id for op in ops if op.user_id is not None}
        for key in _batch_keys(ops):
            hold = self._known[key][0] if key in self._known else None
            if hold is not None:
                users.add(hold.user_id)
        return {user_id: replace(self.accounts[user_id]) for user_id in users}

    def recall(self, state: BatchState, ops: list[Op]) -> None:
        """Put what is known of the batch's keys into the batch, as copies it may change."""
        for key in _batch_keys(ops):
            known = self._known.get(key)
            if known is None:
                continue
            hold, entry = known
            if hold is not None:
                state.holds[key] = replace(hold)
            if entry is not None:
                state.entries[key] = entry

    def remember(self, state: BatchState, ops: list[Op]) -> None:
        """After commit: the batch's accounts and keys are now known exactly, and so are the holds it changed."""
        self.accounts.update(state.touched)
        if len(self.accounts) > _MAX_CACHED_USERS:
            self.accounts.clear()
        keys = set(_batch_keys(ops))
        changed = (key for key in state.holds if key not in keys and key in self._known)
        for key in (*keys, *changed):
            hold = state.holds.get(key)
            committed = replace(hold, is_new=False, dirty=False) if hold is not None else None
            entry = state.entries.get(key) if key in keys else self._known[key][1]
            self._known[key] = (committed, entry)
            self._known.move_to_end(key)
        while len(self._known) > _MAX_KNOWN_KEYS:
            self._known.popitem(last=False)

    def forget_accounts(self, state: BatchState) -> None:
        """Drop the cached accounts the batch touched: another writer may have moved them."""
        for user_id in state.touched:
            self.accounts.pop(user_id, None)

    def forget(self, state: BatchState, ops: list[Op]) -> None:
        """After a failed commit, which may have landed: drop the batch's accounts, keys and changed holds."""
        self.forget_accounts(state)
        for key in (*state.holds, *_batch_keys(ops)):
            self._known.pop(key, None)
