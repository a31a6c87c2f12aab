"""When image jobs are next due: the due-time index and the backoff after errors."""

from __future__ import annotations

import heapq
import random


def backoff_delay_ms(errors: int, base_ms: int, max_ms: int, rng: random.Random) -> int:
    """The wait after `errors` consecutive errors: base·2^(errors-1), capped, jittered in its upper half."""
    ceiling: int = min(max_ms, base_ms * 2 ** min(max(errors, 1) - 1, 30))
    return ceiling // 2 + int(rng.random() * (ceiling - ceiling // 2))


class DueIndex:
    """Jobs by due time: a heap with lazy deletion, so rescheduling is O(log n) and idling is free."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, tuple[int, str]] = {}

    def __len__(self) -> int:
        return len(self._due)

    def push(self, job_id: str, provider_id: str, due_ms: int) -> None:
        """Schedule a job; an earlier due time already scheduled wins."""
        current = self._due.get(job_id)
        if current is not None and current[0] <= due_ms:
            return
        self._due[job_id] = (due_ms, provider_id)
        heapq.heappush(self._heap, (due_ms, job_id))

    def next_due(self) -> int | None:
        """The earliest due time, if any job is scheduled."""
        while self._heap:
            due_ms, job_id = self._heap[0]
            current = self._due.get(job_id)
            if current is not None and current[0] == due_ms:
                return due_ms
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now_ms: int) -> list[tuple[str, str]]:
        """Remove and return `(job_id, provider_id)` of every job due by `now_ms`."""
        due: list[tuple[str, str]] = []
        while (next_due := self.next_due()) is not None and next_due <= now_ms:
            _, job_id = heapq.heappop(self._heap)
            _, provider_id = self._due.pop(job_id)
            due.append((job_id, provider_id))
        return due
