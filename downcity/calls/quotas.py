"""Quota admission of one call: which quotas bind it, what it claims from each, and the headers it answers with.

A call binds the Federation's declared quotas and its city's stored ones whose scope matches (see
`downcity.quotas.Quota`). From each it claims one request, its token estimate (the prompt counted offline
plus its output budget, see `downcity.calls.pricing.estimate`) and its hold in credits; the claims are taken
together or not at all. A refusal is 429 `rate_limited` (requests or tokens per minute, with `Retry-After`)
or 402 `budget_exceeded` (credits per day or month), before any hold or upstream work. Once the call ends,
its tokens and credits are trued up to what it used: unused estimate and hold go back to the budget.

Every response of a call bound by a requests or tokens limit carries OpenAI's rate-limit headers, from the
tightest budget of each: `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`,
`x-ratelimit-reset-requests` and the `-tokens` triple.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from downcity.ai.provider import ModelConfig
from downcity.auth.caller import Caller
from downcity.calls.pricing import estimate, hold_of
from downcity.errors import DowncityHTTPError
from downcity.quotas import Claim, Decision, Quota, QuotaPort, Standing, bucket_of
from downcity.quotas.quota import Metric
from downcity.runtime import Runtime

logger = logging.getLogger(__name__)

_HEADER_NAMES: dict[Metric, str] = {"requests": "requests", "tokens": "tokens"}
# True-ups run after the response; kept here so they are not garbage-collected mid-flight.
_TRUE_UPS: set[asyncio.Task[None]] = set()


def reset_text(ms: int) -> str:
    """A reset delay as OpenAI writes it: `250ms`, `12s`, `1.5s`, `6m0s`."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    minutes, rest = divmod(ms, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def rate_headers(standings: Mapping[Metric, Standing]) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for the requests and tokens budgets among `standings`."""
    headers: dict[str, str] = {}
    for metric, name in _HEADER_NAMES.items():
        standing = standings.get(metric)
        if standing is not None:
            headers[f"x-ratelimit-limit-{name}"] = str(standing.limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(standing.remaining)
            headers[f"x-ratelimit-reset-{name}"] = reset_text(standing.reset_ms)
    return headers


def refusal(decision: Decision) -> DowncityHTTPError:
    """The error of a refused admission, with its headers."""
    headers = rate_headers(decision.standings)
    metric = decision.refused
    assert metric is not None
    standing = decision.standings[metric]
    if metric in ("credits_day", "credits_month"):
        period = "day" if metric == "credits_day" else "month"
        message = f"the credit budget of this {period} ({standing.limit} microcredits) is spent"
        return DowncityHTTPError(402, "budget_exceeded", message, headers=headers)
    headers["retry-after"] = str(max(1, -(-standing.reset_ms // 1000)))
    headers["retry-after-ms"] = str(max(1, standing.reset_ms))
    limit = "requests" if metric == "requests" else "tokens"
    message = f"rate limited: {standing.limit} {limit} per minute; retry in {reset_text(standing.reset_ms)}"
    return DowncityHTTPError(429, "rate_limited", message, headers=headers)


def binding_quotas(runtime: Runtime, caller: Caller, model: ModelConfig) -> list[tuple[Quota, str]]:
    """The declared and stored quotas that bind a call, each with its source (`federation` or `city`)."""
    metadata = caller.user_info().metadata
    declared = [(quota, "federation") for quota in runtime.federation.quotas]
    stored = [(quota, "city") for quota in runtime.quota_cache.of(caller.city_id)]
    return [
        (quota, source)
        for quota, source in (*declared, *stored)
        if quota.binds(caller.city_id, caller.user_id, metadata, model.id)
    ]


@dataclass
class QuotaTicket:
    """What an admitted call took from its budgets, until it is trued up."""

    port: QuotaPort
    decision: Decision

    @property
    def headers(self) -> dict[str, str]:
        """The rate-limit headers of the call's responses."""
        return rate_headers(self.decision.standings)

    def true_up(self, tokens: int, credits: int) -> None:
        """After the response: true the token and credit claims up to what the call used."""
        used: dict[Metric, int] = {"tokens": tokens, "credits_day": credits, "credits_month": credits}
        self._later(self.port.settle(self.decision.taken, used))

    async def refund(self) -> None:
        """Give everything back: the call was refused after its quotas admitted it (by the Ledger, say)."""
        await self.port.refund(self.decision.taken)

    def _later(self, work: Any) -> None:
        task = asyncio.create_task(work)
        _TRUE_UPS.add(task)
        task.add_done_callback(_finished)


def _finished(task: asyncio.Task[None]) -> None:
    _TRUE_UPS.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a quota true-up failed: %r", task.exception())


async def admit_quotas(
    runtime: Runtime, caller: Caller, model: ModelConfig, input: Mapping[str, Any]
) -> QuotaTicket | None:
    """Take the call's claims from every quota that binds it; None when none does. Refusals raise."""
    bound = binding_quotas(runtime, caller, model)
    if not bound:
        return None
    tokens = estimate(model, input).tokens
    credits = hold_of(model, input) if model.billable else 0
    amounts: dict[Metric, int] = {"requests": 1, "tokens": tokens, "credits_day": credits, "credits_month": credits}
    claims = [
        Claim(bucket_of(quota, source, caller.city_id, caller.user_id), metric, amounts[metric], limit)
        for quota, source in bound
        for metric, limit in quota.limits().items()
    ]
    decision = await runtime.quotas.admit(caller.city_id, claims)
    if not decision.admitted:
        raise refusal(decision)
    return QuotaTicket(runtime.quotas, decision)
