"""`RayMetrics`: the runtime's metrics through Ray's metrics API, which every node exports to Prometheus.

Ray prefixes each name with `ray_` and counters with the suffix `_total`, and adds its own labels
(`WorkerId`, `NodeAddress`, …), so one series exists per reporting process: sum them in queries. The names
and a Grafana panel are in docs/operators/metrics.md.

Each Ray metric record costs a few microseconds (tag checks, then a call into Ray's C++ recorder), and a call
made about eight. So a call's counters are summed in memory per label set and handed to Ray once per
`COUNTER_FLUSH_S`, from a timer on the event loop; histograms, whose `_sum` needs every value, are still
observed per call. Ray's own export interval (10 s by default) is longer than the flush delay.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

from downcity.metrics import CallMetrics

CALL_TAGS = ("city", "model", "provider", "status")
ADMISSION_TAGS = ("city", "model", "provider", "admitted")
COUNTER_FLUSH_S = 1.0
LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
COMMIT_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
JOBS_REPORT_INTERVAL_S = 5.0
# `downcity_breaker_state`: 0 closed, 1 half-open, 2 open.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class RayMetrics:
    """The `downcity.metrics.Metrics` port over `ray.util.metrics`; create it once per process (`ray_metrics`)."""

    def __init__(self, counter_flush_s: float = COUNTER_FLUSH_S) -> None:
        self.counter_flush_s = counter_flush_s
        # Counter increments not yet handed to Ray: per counter, per label values (in its tag keys' order).
        self._pending: defaultdict[Counter, defaultdict[tuple[str, ...], int]] = defaultdict(lambda: defaultdict(int))
        self._flush_timer: asyncio.TimerHandle | None = None
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
        self.admissions = Counter(
            "downcity_admissions",
            "billable calls admitted, by how: on a replica's credit lease or on their own hold",
            ADMISSION_TAGS,
        )
        self.leases_held = Gauge("downcity_leases_held", "credit leases an ingress replica holds")
        self.leased = Gauge("downcity_leased_microcredits", "unspent credit in a replica's leases")
        self.leased_in_flight = Gauge(
            "downcity_leased_in_flight_microcredits", "leased credit promised to calls in flight"
        )

    def call_finished(self, call: CallMetrics) -> None:
        """Count the call, its tokens and charge (summed until the next flush), and observe its latency and
        time to first byte."""
        values = (call.city, call.model, call.provider, call.status)
        self._count(self.requests, values, 1)
        if call.error_type is not None:
            self._count(self.errors, (*values, call.error_type), 1)
        self._count(self.input_tokens, values, call.input_tokens)
        self._count(self.output_tokens, values, call.output_tokens)
        self._count(self.charged, values, call.charged_microcredits)
        self._count(self.retries, values, call.retries)
        self._count(self.fallbacks, values, int(call.fell_back))
        if call.admitted != "none":
            self._count(self.admissions, (call.city, call.model, call.provider, call.admitted), 1)
        tags = dict(zip(CALL_TAGS, values, strict=True))
        self.latency.observe(call.latency_s, tags)
        if call.ttfb_s is not None:
            self.ttfb.observe(call.ttfb_s, tags)

    def flush(self) -> None:
        """Hand every summed counter increment to Ray (one record per counter and label set)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        pending, self._pending = self._pending, defaultdict(lambda: defaultdict(int))
        for counter, by_values in pending.items():
            keys = counter.info["tag_keys"]
            for values, amount in by_values.items():
                counter.inc(amount, dict(zip(keys, values, strict=True)))

    def _count(self, counter: Counter, values: tuple[str, ...], amount: int) -> None:
        # Ray counters refuse increments of zero.
        if amount <= 0:
            return
        self._pending[counter][values] += amount
        if self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                # No event loop to flush from later: hand it over now.
                self.flush()
                return
            self._flush_timer = loop.call_later(self.counter_flush_s, self.flush)

    def leases_state(self, *, held: int, leased_microcredits: int, in_flight_microcredits: int) -> None:
        """Set this replica's lease gauges."""
        self.leases_held.set(held)
        self.leased.set(leased_microcredits)
        self.leased_in_flight.set(in_flight_microcredits)

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
