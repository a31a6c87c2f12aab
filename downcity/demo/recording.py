"""The demo upstream's memory of recent requests, so tests can check which key the runtime used."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

REQUEST_LOG_LIMIT = 1000


# Same as `downcity.store.database.now_ms`, kept here so the demo process never imports the store.
def now_ms() -> int:
    """Wall-clock time in integer epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One authenticated request: its path, bearer key, requested model and arrival time."""

    path: str
    key: str
    model: str | None
    time_ms: int

    def to_json(self) -> dict[str, Any]:
        """The JSON shape served by `GET /_demo/requests`."""
        return asdict(self)


class RequestLog:
    """The last `limit` requests, oldest first."""

    def __init__(self, limit: int = REQUEST_LOG_LIMIT) -> None:
        self._items: deque[RecordedRequest] = deque(maxlen=limit)

    def record(self, path: str, key: str, model: str | None) -> None:
        """Remember one request, forgetting the oldest beyond the limit."""
        self._items.append(RecordedRequest(path, key, model, now_ms()))

    def items(self) -> list[RecordedRequest]:
        """The remembered requests, newest last."""
        return list(self._items)

    def clear(self) -> None:
        """Forget every request."""
        self._items.clear()
