"""One AI call from admission to settlement: model, fallback, hooks, hold, provider, charge, usage.

Order of a call:
1. resolve the model (explicit id or the pathway default) and apply media fallback;
2. run `before` hooks (federation → service → model); a hook may deny (e.g. 402/429) or edit `ctx.input`;
3. admit: reserve the model's hold estimate (renewed while the call runs), or, for a billable model without
   one, require a positive balance;
4. call the provider deployment;
5. resolve the charge (action charge > model bill > provider bill > none) and settle it with the usage row
   in one ledger transaction;
6. run `after` hooks (model → service → federation). On a failure after admission the hold is released,
   an error usage row is written and `on_error` hooks run (model → service → federation).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from downcity.ai.context import Context, Metering
from downcity.ai.hooks import run_after, run_before, run_on_error
from downcity.ai.provider import ModelConfig
from downcity.auth.caller import Caller
from downcity.calls.admission import admit
from downcity.calls.charge import resolve_charge
from downcity.calls.resolution import apply_fallback, extract_media, resolve_model
from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import ActionRequest
from downcity.metrics import CallMetrics
from downcity.runtime import Runtime
from downcity.store.database import now_ms
from downcity.types import ChargeDraft, Usage


def new_request_id() -> str:
    """A fresh request id."""
    return f"req_{uuid.uuid4().hex}"


@dataclass
class Call:
    """A call in flight: who, which model, its context and billing state."""

    runtime: Runtime
    caller: Caller
    pathway: str
    request_id: str
    key: str
    model: ModelConfig
    fallback_from: str | None
    ctx: Context
    chain: list[Any]
    started: float = field(default_factory=time.perf_counter)
    reserved: bool = False
    settled: bool = False

    def action_request(self) -> ActionRequest:
        """The serializable request the provider deployment runs."""
        return ActionRequest(
            request_id=self.request_id,
            pathway=self.pathway,
            model_id=self.model.id,
            input=self.ctx.input,
            user=self.ctx.user,
            city=self.ctx.city,
            locals=self.ctx.locals,
        )

    def elapsed_ms(self) -> int:
        """Milliseconds since the call was admitted."""
        return int((time.perf_counter() - self.started) * 1000)

    def usage_row(self, status: str, http_status: int, error_type: str | None = None) -> dict[str, Any]:
        """The `usage_records` row for this call."""
        usage = self.ctx.metering.usage
        return {
            "request_id": self.request_id,
            "idempotency_key": self.key,
            "city_id": self.caller.city_id,
            "user_id": self.caller.user_id,
            "pathway": self.pathway,
            "model_id": self.model.id,
            "provider_id": self.model.provider.id,
            "fallback_from": self.fallback_from,
            "status": status,
            "http_status": http_status,
            "error_type": error_type,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "duration_ms": self.elapsed_ms(),
            "ttfb_ms": self.ctx.metering.ttfb_ms,
            "created_at_ms": now_ms(),
        }

    def record(self, usage: Usage, action_charge: ChargeDraft | None, ttfb_ms: int | None) -> None:
        """Take the provider's usage, action charge and time to first byte into the context."""
        self.ctx.metering.add_usage(usage)
        if action_charge is not None:
            self.ctx.metering.set_charge(action_charge)
        if ttfb_ms is not None and self.ctx.metering.ttfb_ms is None:
            self.ctx.metering.ttfb_ms = ttfb_ms

    def report(self, status: str, charged_microcredits: int = 0, error_type: str | None = None) -> None:
        """Report the finished call to the runtime's metrics."""
        usage, ttfb_ms = self.ctx.metering.usage, self.ctx.metering.ttfb_ms
        self.runtime.metrics.call_finished(
            CallMetrics(
                city=self.caller.city_id,
                model=self.model.id,
                provider=self.model.provider.id,
                status=status,
                error_type=error_type,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                charged_microcredits=charged_microcredits,
                latency_s=time.perf_counter() - self.started,
                ttfb_s=ttfb_ms / 1000 if ttfb_ms is not None else None,
            )
        )

    def record_report(self, report: dict[str, Any]) -> None:
        """Take a streamed `{usage, charge, ttfb_ms}` report from the provider deployment into the context."""
        charge = report.get("charge")
        self.record(
            Usage.model_validate(report.get("usage") or {}),
            ChargeDraft.model_validate(charge) if charge else None,
            report.get("ttfb_ms"),
        )

    async def succeed(self, output: Any) -> ChargeDraft | None:
        """Resolve and settle the charge, write usage, then run `after` hooks."""
        self.runtime.renewer.untrack(self.key, self.caller.user_id)
        self.ctx.output = output
        self.ctx.duration_ms = self.elapsed_ms()
        charge = resolve_charge(self.ctx.metering.charge, self.model, self.model.provider, self.ctx, output)
        amount = charge.amount_microcredits if charge is not None else 0
        row = self.usage_row("ok", 200)
        ledger = self.runtime.ledger
        if amount > 0 or self.reserved:
            await ledger.settle(
                self.key,
                self.caller.user_id,
                amount,
                ref=charge.ref if charge else None,
                note=charge.note if charge else None,
                metadata=charge.metadata if charge else None,
                usage=row,
            )
        else:
            await ledger.record_usage(row)
        self.settled = True
        self.report("ok", amount)
        await run_after(self.ctx, self.chain)
        return charge

    async def fail(self, error: DowncityHTTPError, status: str = "error") -> None:
        """Release any hold, write the error usage row, then run `on_error` hooks."""
        if self.settled:
            return
        self.settled = True
        self.runtime.renewer.untrack(self.key, self.caller.user_id)
        self.ctx.error = error
        self.ctx.duration_ms = self.elapsed_ms()
        row = self.usage_row(status, error.status, error.type)
        if self.reserved:
            await self.runtime.ledger.release(self.key, usage=row)
        else:
            await self.runtime.ledger.record_usage(row)
        self.report(status, error_type=error.type)
        await run_on_error(self.ctx, self.chain)


def call_key(caller: Caller, client_key: str | None, request_id: str) -> str:
    """The idempotency key of a call: the client's key scoped to the caller, else the request id."""
    if client_key:
        return f"call:{caller.city_id}:{caller.user_id}:{client_key}"
    return f"call:{request_id}"


async def begin_call(
    runtime: Runtime, caller: Caller, pathway: str, body: dict[str, Any], client_key: str | None
) -> Call:
    """Resolve, run `before` hooks and admit a call; raises before any provider work on refusal."""
    federation = runtime.federation
    requested = resolve_model(federation, pathway, body.get("model"))
    model, fallback_from = apply_fallback(federation, requested, extract_media(body), pathway)
    request_id = new_request_id()
    ctx = Context(
        input=dict(body),
        user=caller.user_info(),
        city=caller.city_info(),
        model=model,
        provider=model.provider,
        pathway=pathway,
        request_id=request_id,
        metering=Metering(),
        env_reader=runtime.env,
    )
    call = Call(
        runtime=runtime,
        caller=caller,
        pathway=pathway,
        request_id=request_id,
        key=call_key(caller, client_key, request_id),
        model=model,
        fallback_from=fallback_from,
        ctx=ctx,
        chain=federation.hook_chain(model),
    )
    try:
        await run_before(ctx, call.chain)
        call.reserved = await admit(runtime.ledger, call.key, caller.user_id, model)
        if call.reserved:
            runtime.renewer.track(call, call.key, caller.user_id)
    except DowncityHTTPError as error:
        call.settled = True
        await runtime.ledger.record_usage(call.usage_row("refused", error.status, error.type))
        call.report("refused", error_type=error.type)
        raise
    return call
