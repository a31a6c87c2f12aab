"""`RayMetrics` sums a call's counters in memory and hands them to Ray once per flush; histograms see every call."""

from __future__ import annotations

import asyncio
from typing import Any

from ray.util.metrics import Counter, Histogram

from actors.metrics import RayMetrics
from downcity.metrics import CallMetrics


class Recorder:
    """Stands in for one Ray metric: keeps every record (`inc`/`observe`) with its tags."""

    def __init__(self, metric: Counter | Histogram, flushed: asyncio.Event | None) -> None:
        self.info = metric.info
        self.records: list[tuple[float, dict[str, str]]] = []
        self.flushed = flushed

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.records.append((value, tags))
        if self.flushed is not None:
            self.flushed.set()

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.records.append((value, tags))


def recorded(metrics: RayMetrics, flushed: asyncio.Event | None = None) -> dict[str, Recorder]:
    """Put a `Recorder` in place of each of `metrics`' counters and histograms, by attribute name."""
    recorders = {}
    for name, metric in vars(metrics).items():
        if isinstance(metric, (Counter, Histogram)):
            recorders[name] = Recorder(metric, flushed)
            setattr(metrics, name, recorders[name])
    return recorders


def call(city: str = "c", status: str = "ok", **values: Any) -> CallMetrics:
    fields: dict[str, Any] = {
        "city": city,
        "model": "m",
        "provider": "p",
        "status": status,
        "error_type": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "charged_microcredits": 0,
        "latency_s": 0.5,
        "ttfb_s": None,
    }
    return CallMetrics(**{**fields, **values})


def tags(city: str = "c", status: str = "ok", **more: str) -> dict[str, str]:
    return {"city": city, "model": "m", "provider": "p", "status": status, **more}


async def test_counters_are_summed_per_label_set_until_the_timer_hands_them_to_ray() -> None:
    metrics = RayMetrics(counter_flush_s=0.05)
    flushed = asyncio.Event()
    r = recorded(metrics, flushed)

    metrics.call_finished(call(input_tokens=3, output_tokens=5, charged_microcredits=100, admitted="lease"))
    metrics.call_finished(call(input_tokens=4, output_tokens=0, charged_microcredits=200, retries=2, admitted="hold"))
    metrics.call_finished(call(city="d", status="error", error_type="upstream_error", fell_back=True))
    assert (r["requests"].records, r["charged"].records) == ([], [])
    assert len(r["latency"].records) == 3

    await asyncio.wait_for(flushed.wait(), 30)
    assert r["requests"].records == [(2, tags()), (1, tags("d", "error"))]
    assert r["errors"].records == [(1, tags("d", "error", error_type="upstream_error"))]
    assert r["input_tokens"].records == [(7, tags())]
    assert r["output_tokens"].records == [(5, tags())]
    assert r["charged"].records == [(300, tags())]
    assert r["retries"].records == [(2, tags())]
    assert r["fallbacks"].records == [(1, tags("d", "error"))]
    admission = {"city": "c", "model": "m", "provider": "p"}
    assert r["admissions"].records == [(1, {**admission, "admitted": "lease"}), (1, {**admission, "admitted": "hold"})]
    assert r["ttfb"].records == []


async def test_a_flush_hands_over_at_once_and_leaves_nothing_for_the_timer() -> None:
    metrics = RayMetrics(counter_flush_s=3600)
    r = recorded(metrics)
    metrics.call_finished(call())
    metrics.flush()
    metrics.flush()
    assert r["requests"].records == [(1, tags())]
    metrics.call_finished(call(ttfb_s=0.25))
    assert (r["requests"].records, r["ttfb"].records) == ([(1, tags())], [(0.25, tags())])
    metrics.flush()
    assert r["requests"].records == [(1, tags()), (1, tags())]


def test_without_an_event_loop_every_call_is_handed_over_at_once() -> None:
    metrics = RayMetrics()
    r = recorded(metrics)
    metrics.call_finished(call(charged_microcredits=7))
    metrics.call_finished(call(charged_microcredits=8))
    assert (r["requests"].records, r["charged"].records) == ([(1, tags()), (1, tags())], [(7, tags()), (8, tags())])
