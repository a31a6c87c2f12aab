"""`RayMetrics`: the runtime's metrics through Ray's metrics API, which every node exports to Prometheus.

Ray prefixes each name with `ray_` and counters with the suffix `_total`, and adds its own labels
(`WorkerId`, `NodeAddress`, …), so one series exists per reporting process: sum them in queries. The names
and a Grafana panel are in docs/operators/metrics.md.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

from downcity.metrics import CallMetrics

CALL_TAGS = ("city", "model", "provider", "status")
LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
COMMIT_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
JOBS_REPORT_INTERVAL_S = 5.0
# `downcity_breaker_state`: 0 closed, 1 half-open, 2 open.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class RayMetrics:
    """The `downcity.metrics.Metrics` port over `ray.util.metrics`; create it once per process (`ray_metrics`)."""

    def __init__(self) -> None:
        self.requests = Counter("downcity_requests", "AI calls that ended, by status", CALL_TAGS)
        self.errors = Counter(
            "downcity_errors", "AI calls that did not succeed, by error type", (*CALL_TAGS, "error_type")
        )
        self.input_tokens = Counter("downcity_input_tokens", "input tokens the provider reported", CALL_TAGS)
        self.output_tokens = Counter("downcity_output_tokens", "output tokens the provider reported", CALL_TAGS)
        self.charged = Counter("downcity_charged_microcredits", "microcredits settled on calls", CALL_TAGS)
        self.latency = Histogram(
            "downcity_request_latency_seconds", "admission to settlement", LATENCY_BUCKETS_S, CALL_TAGS
        )
        self.ttfb = Histogram(
            "downcity_ttfb_seconds", "admission to the provider's first byte", LATENCY_BUCKETS_S, CALL_TAGS
        )
        self.ledger_queue = Gauge("downcity_ledger_queue_depth", "ledger ops waiting for a commit", ("shard",))
        self.ledger_commit = Histogram(
            "downcity_ledger_commit_seconds", "one group commit, retries included", COMMIT_BUCKETS_S, ("shard",)
        )
        self.ledger_ops = Counter("downcity_ledger_ops", "ledger ops committed", ("shard",))
        self.jobs_pending = Gauge("downcity_image_jobs_pending", "image jobs with work left")
        self.jobs_in_flight = Gauge("downcity_image_jobs_in_flight", "image job polls running")
        self.fetch_lag = Gauge(
            "downcity_image_fetch_lag_ms", "image_fetch start behind its due time, recent polls", ("quantile",)
        )
        self.retries = Counter("downcity_upstream_retries", "upstream attempts beyond a call's first", CALL_TAGS)
        self.fallbacks = Counter("downcity_fallbacks", "calls another model answered after an error", CALL_TAGS)
        self.breaker_state = Gauge(
            "downcity_breaker_state",
            "a replica's circuit breaker: 0 closed, 1 half-open, 2 open",
            ("provider", "scope"),
        )

    def call_finished(self, call: CallMetrics) -> None:
        """Count the call, its tokens and charge, and observe its latency and time to first byte."""
        tags = {"city": call.city, "model": call.model, "provider": call.provider, "status": call.status}
        self.requests.inc(1, tags)
        if call.error_type is not None:
            self.errors.inc(1, {**tags, "error_type": call.error_type})
        # Ray counters refuse increments of zero.
        if call.input_tokens > 0:
            self.input_tokens.inc(call.input_tokens, tags)
        if call.output_tokens > 0:
            self.output_tokens.inc(call.output_tokens, tags)
        if call.charged_microcredits > 0:
            self.charged.inc(call.charged_microcredits, tags)
        self.latency.observe(call.latency_s, tags)
        if call.ttfb_s is not None:
            self.ttfb.observe(call.ttfb_s, tags)
        if call.retries > 0:
            self.retries.inc(call.retries, tags)
        if call.fell_back:
            self.fallbacks.inc(1, tags)

    def breaker_changed(self, provider: str, scope: str, state: str) -> None:
        """Set a provider replica's breaker gauge (`scope` is ``deployment`` or ``key:<name>``)."""
        self.breaker_state.set(BREAKER_STATES[state], {"provider": provider, "scope": scope})

    def ledger_batch(self, *, shard: int, ops: int, queue_depth: int, commit_s: float) -> None:
        """Set the shard's queue depth and observe its commit time."""
        tags = {"shard": str(shard)}
        self.ledger_queue.set(queue_depth, tags)
        self.ledger_commit.observe(commit_s, tags)
        if ops > 0:
            self.ledger_ops.inc(ops, tags)

    def jobs_state(self, *, pending: int, in_flight: int, lag_p50_ms: int | None, lag_p99_ms: int | None) -> None:
        """Set the scheduler's gauges; a lag is left unset until a first poll measured one."""
        self.jobs_pending.set(pending)
        self.jobs_in_flight.set(in_flight)
        self.fetch_lag.set(lag_p50_ms, {"quantile": "0.5"})
        self.fetch_lag.set(lag_p99_ms, {"quantile": "0.99"})


@functools.cache
def ray_metrics() -> RayMetrics:
    """This process's `RayMetrics`: Ray keeps one registration per metric name and process."""
    return RayMetrics()


async def report_jobs_forever(
    stats: Callable[[], dict[str, Any]], metrics: RayMetrics, interval_s: float = JOBS_REPORT_INTERVAL_S
) -> None:
    """Report a JobManager's `stats()` every `interval_s` until cancelled."""
    while True:
        current = stats()
        metrics.jobs_state(
            pending=int(current["scheduled"]) + int(current["in_flight"]),
            in_flight=int(current["in_flight"]),
            lag_p50_ms=current["lag_p50_ms"],
            lag_p99_ms=current["lag_p99_ms"],
        )
        await asyncio.sleep(interval_s)
