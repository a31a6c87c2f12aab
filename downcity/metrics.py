"""What the runtime reports for operators: one `Metrics` port, and `NoMetrics`, the default that drops it all.

The library never imports Ray: `actors.metrics.RayMetrics` implements this port with Ray's metrics API, which
the Ray nodes export to Prometheus. Every method is called on a hot path, so implementations must not block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CallMetrics:
    """One finished AI call: its labels and what it measured."""

    city: str
    model: str
    provider: str
    status: str
    error_type: str | None
    input_tokens: int
    output_tokens: int
    charged_microcredits: int
    latency_s: float
    ttfb_s: float | None
    retries: int = 0
    fell_back: bool = False
    # How the call was admitted: "lease" (a replica's credit lease), "hold" (its own hold) or "none" (unbilled,
    # or refused before admission).
    admitted: str = "none"


class Metrics(Protocol):
    """Where the runtime reports calls, ledger batches and the image job scheduler."""

    def call_finished(self, call: CallMetrics) -> None:
        """An AI call ended: `ok`, `error`, `cancelled` or `refused` (before any provider work)."""

    def ledger_batch(self, *, shard: int, ops: int, queue_depth: int, commit_s: float) -> None:
        """A ledger shard committed `ops` ops in one transaction; `queue_depth` ops were still waiting."""

    def jobs_state(self, *, pending: int, in_flight: int, lag_p50_ms: int | None, lag_p99_ms: int | None) -> None:
        """The image job scheduler's jobs with work left, polls running, and poll lag behind due time."""

    def leases_state(self, *, held: int, leased_microcredits: int, in_flight_microcredits: int) -> None:
        """A replica's credit leases: how many it holds, their unspent credit, and how much of it calls in flight
        may still spend."""

    def flush(self) -> None:
        """Hand over anything summed in memory and not yet reported (the process is stopping)."""


class NoMetrics:
    """Reports nothing: the default of the in-process runtime and the library's classes."""

    def call_finished(self, call: CallMetrics) -> None:
        """Drop it."""

    def ledger_batch(self, *, shard: int, ops: int, queue_depth: int, commit_s: float) -> None:
        """Drop it."""

    def jobs_state(self, *, pending: int, in_flight: int, lag_p50_ms: int | None, lag_p99_ms: int | None) -> None:
        """Drop it."""

    def leases_state(self, *, held: int, leased_microcredits: int, in_flight_microcredits: int) -> None:
        """Drop it."""

    def flush(self) -> None:
        """Nothing is kept."""
