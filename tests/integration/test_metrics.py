"""Operator metrics: after traffic, the node's Prometheus endpoint has Downcity's series with exact counts.

Ray exports each process's metrics to its node's metrics agent every few seconds, so the scrape polls with a
deadline. Series are summed over Ray's own labels (one series per reporting process).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ServedApp

pytestmark = pytest.mark.ray

SCRAPE_DEADLINE_S = 45.0
PROMPTS = ("one two", "three four five", "six")
# The Ledger ops the traffic commits at least: the seed credit and the three calls' settles.
LEDGER_OPS = 4
CALL = {"model": "reverse", "provider": "local-tools"}


@dataclass(frozen=True)
class Sample:
    """One scraped sample: its name, labels and value."""

    name: str
    labels: dict[str, str]
    value: float


def scrape() -> list[Sample]:
    """Every sample of every live node's metrics endpoint (on loopback: the nodes are this machine)."""
    samples: list[Sample] = []
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if node["Alive"]:
            body = httpx.get(f"http://127.0.0.1:{node['MetricsExportPort']}/metrics", timeout=5).text
            for family in text_string_to_metric_families(body):
                samples.extend(Sample(s.name, dict(s.labels), s.value) for s in family.samples)
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of `name` over every series carrying `labels`."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


@dataclass(frozen=True)
class Traffic:
    """What the test sent, and the samples scraped once they reflected it."""

    city_id: str
    charged: int
    input_tokens: int
    output_tokens: int
    samples: list[Sample]
    ledger_ops_before: float


async def poll(done: Callable[[list[Sample]], bool]) -> list[Sample]:
    """Scrape until `done(samples)` or the deadline; the last scrape either way."""
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while True:
        samples = await asyncio.to_thread(scrape)
        if done(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(1.0)


async def send(served: ServedApp) -> tuple[str, list[dict[str, Any]]]:
    """Three billed calls, one refused call and one image job; returns the city and the billed replies."""
    city_id, _, token = await served.new_user(credit=1_000_000)
    _, _, refused_token = await served.new_user(city_id=city_id, metadata={"quota_exceeded": True})
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        replies = [
            await client.post(
                "/v1/ai/text", json={"model": "reverse", "prompt": p}, headers={"Authorization": f"Bearer {token}"}
            )
            for p in PROMPTS
        ]
        refused = await client.post(
            "/v1/ai/text",
            json={"model": "reverse", "prompt": "no"},
            headers={"Authorization": f"Bearer {refused_token}"},
        )
        image = await client.post(
            "/v1/ai/image/create", json={"prompt": "a lag probe"}, headers={"Authorization": f"Bearer {token}"}
        )
    assert [r.status_code for r in replies] == [200, 200, 200], [r.text for r in replies]
    assert (refused.status_code, image.status_code) == (429, 200), (refused.text, image.text)
    return city_id, [r.json()["metadata"] for r in replies]


@pytest.fixture(scope="module")
async def traffic(served: ServedApp) -> Traffic:
    ledger_ops_before = total(await asyncio.to_thread(scrape), "ray_downcity_ledger_ops_total", shard="0")
    city_id, billed = await send(served)

    def reflected(samples: list[Sample]) -> bool:
        calls = total(samples, "ray_downcity_requests_total", city=city_id)
        # Each process exports on its own schedule: wait for the ingress, the JobManager and the Ledger.
        names = {s.name for s in samples}
        ledger_ops = total(samples, "ray_downcity_ledger_ops_total", shard="0") - ledger_ops_before
        return (
            calls == len(PROMPTS) + 1
            and ledger_ops >= LEDGER_OPS
            and "ray_downcity_image_fetch_lag_ms" in names
            and {"ray_downcity_ledger_queue_depth", "ray_downcity_ledger_commit_seconds_count"} <= names
        )

    return Traffic(
        city_id=city_id,
        charged=sum(m["charge"]["amount_microcredits"] for m in billed),
        input_tokens=sum(m["usage"]["input_tokens"] for m in billed),
        output_tokens=sum(m["usage"]["output_tokens"] for m in billed),
        samples=await poll(reflected),
        ledger_ops_before=ledger_ops_before,
    )


async def test_requests_are_counted_per_city_model_provider_and_status(traffic: Traffic) -> None:
    ok = total(traffic.samples, "ray_downcity_requests_total", city=traffic.city_id, status="ok", **CALL)
    refused = total(traffic.samples, "ray_downcity_requests_total", city=traffic.city_id, status="refused", **CALL)
    assert (ok, refused) == (3, 1)


async def test_errors_are_counted_by_error_type(traffic: Traffic) -> None:
    errors = total(traffic.samples, "ray_downcity_errors_total", city=traffic.city_id, **CALL)
    quota = total(traffic.samples, "ray_downcity_errors_total", city=traffic.city_id, error_type="quota_exceeded")
    assert (errors, quota) == (1, 1)


async def test_tokens_and_charges_match_the_replies(traffic: Traffic) -> None:
    city = {"city": traffic.city_id, "status": "ok", **CALL}
    # `reverse` meters a token per word each way and charges 10 per character.
    words, characters = sum(len(p.split()) for p in PROMPTS), sum(len(p) for p in PROMPTS)
    assert (traffic.input_tokens, traffic.output_tokens, traffic.charged) == (words, words, 10 * characters)
    assert total(traffic.samples, "ray_downcity_input_tokens_total", **city) == words
    assert total(traffic.samples, "ray_downcity_output_tokens_total", **city) == words
    assert total(traffic.samples, "ray_downcity_charged_microcredits_total", **city) == 10 * characters


async def test_latency_and_time_to_first_byte_are_histograms_of_every_call(traffic: Traffic) -> None:
    city = {"city": traffic.city_id, **CALL}
    assert total(traffic.samples, "ray_downcity_request_latency_seconds_count", **city) == 4
    assert total(traffic.samples, "ray_downcity_request_latency_seconds_bucket", le="+Inf", **city) == 4
    assert total(traffic.samples, "ray_downcity_ttfb_seconds_count", status="ok", **city) == 3


async def test_ledger_commits_report_queue_depth_and_commit_latency(traffic: Traffic) -> None:
    names = {s.name for s in traffic.samples if s.labels.get("shard") == "0"}
    assert {"ray_downcity_ledger_queue_depth", "ray_downcity_ledger_commit_seconds_count"} <= names
    # The seed credit and three settles were committed by the time the replies came back: the exported count grew
    # by at least that much since the scrape before the traffic (other tests' ops may still add to it).
    ledger_ops = total(traffic.samples, "ray_downcity_ledger_ops_total", shard="0") - traffic.ledger_ops_before
    assert ledger_ops >= LEDGER_OPS


async def test_the_job_scheduler_reports_pending_jobs_and_fetch_lag(traffic: Traffic) -> None:
    names = {s.name for s in traffic.samples}
    assert {"ray_downcity_image_jobs_pending", "ray_downcity_image_jobs_in_flight"} <= names
    quantiles = {s.labels["quantile"] for s in traffic.samples if s.name == "ray_downcity_image_fetch_lag_ms"}
    assert quantiles == {"0.5", "0.99"}
