"""One AI call from admission to settlement: model, fallback, hooks, hold, provider, charge, usage.

Order of a call:
1. resolve the model (explicit id or the pathway default) and apply media fallback;
2. run `before` hooks (federation → service → model); a hook may deny (e.g. 402/429) or edit `ctx.input`;
3. admit: the quotas that bind the call take its claims (429/402 when one is spent, see `quotas`), then a
   billable model's call is admitted inside a durable hold: its share of this replica's credit lease (no Ledger
   trip, see `downcity.ledger.leases`), or a hold reserved under the call's own key (`call:<request_id>`),
   renewed while the call runs; every upstream call has its own entry and usage row;
4. call the provider deployment;
5. resolve the charge (action charge > model bill > provider bill > price > none) and settle it with the usage row
   in one ledger transaction; the Ledger never charges more than the hold;
6. run `after` hooks (model → service → federation); a failing after hook is logged, never turned into an
   error for a call that is already paid. On a failure after admission the hold is released, an error usage
   row is written and `on_error` hooks run (model → service → federation).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from downcity.ai.context import Context, Metering
from downcity.ai.hooks import run_after, run_before, run_on_error
from downcity.ai.provider import ModelConfig
from downcity.ai.resilience import Failure
from downcity.auth.caller import Caller
from downcity.calls.admission import Admission, admit
from downcity.calls.charge import resolve_priced_charge
from downcity.calls.quotas import QuotaTicket, admit_quotas
from downcity.calls.resolution import apply_fallback, error_fallback, extract_media, resolve_model
from downcity.errors import DowncityHTTPError, invalid
from downcity.gateway.actions import ActionRequest
from downcity.ledger.outbox import Outbox, PendingSettle
from downcity.metrics import CallMetrics
from downcity.runtime import Runtime
from downcity.store.database import now_ms
from downcity.types import ChargeDraft, Usage

logger = logging.getLogger(__name__)

# The longest total timeout a caller may ask for (`timeout_ms`); it can only shorten the model's own.
MAX_CALLER_TIMEOUT_MS = 3_600_000


def new_request_id() -> str:
    """A fresh request id."""
    return f"req_{secrets.token_hex(16)}"


def unbounded_charge(model: ModelConfig) -> DowncityHTTPError:
    """The error of an action that charged on a model with no hold to bound it (an operator's mistake)."""
    return DowncityHTTPError(
        502, "provider_error", f"model '{model.id}' charged a call but declares no hold_microcredits to bound it"
    )


@dataclass
class Call:
    """A call in flight: who, which model, its context and billing state."""

    runtime: Runtime
    caller: Caller
    pathway: str
    request_id: str
    model: ModelConfig
    fallback_from: str | None
    ctx: Context
    chain: list[Any]
    idempotency_key: str | None = None
    started: float = field(default_factory=time.perf_counter)
    reserved: bool = False
    admission: Admission | None = None
    settled: bool = False
    usage_source: str = "upstream"
    timeout_ms: int | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    key_name: str | None = None
    fallen_back: bool = False
    quota: QuotaTicket | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Headers every response of this call carries: its quotas' rate limits."""
        return self.quota.headers if self.quota is not None else {}

    def _true_up(self, credits: int) -> None:
        if self.quota is not None:
            self.quota.true_up(self.ctx.metering.usage.total_tokens, credits)

    @property
    def account(self) -> str:
        """The account the call spends from: its city's, unless that city shares an account space."""
        return self.runtime.federation.accounts.account_id(self.caller.city_id, self.caller.user_id)

    @property
    def key(self) -> str:
        """The call's ledger key: one hold, one entry and one usage row per upstream call."""
        return f"call:{self.request_id}"

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
            timeout_ms=self.remaining_ms(),
        )

    def remaining_ms(self) -> int | None:
        """What is left of the caller's total timeout, if it set one (at least 1 ms)."""
        if self.timeout_ms is None:
            return None
        return max(1, self.timeout_ms - self.elapsed_ms())

    def took(self, attempts: list[dict[str, Any]], key_name: str | None) -> None:
        """Add the upstream attempts a provider deployment made for this call, and the key that served it."""
        self.attempts.extend(attempts)
        if key_name is not None:
            self.key_name = key_name

    def took_from(self, error: DowncityHTTPError) -> None:
        """Add the attempts a failed provider action reported with its error (once: they are taken off it)."""
        self.took(list(error.detail.pop("attempts", None) or []), error.detail.pop("key_name", None))

    def fall_back_after(self, error: DowncityHTTPError) -> bool:
        """After the model failed (nothing sent yet): switch to its first matching error fallback, if any.

        The call keeps its hold, entry and usage row: a fallback model's charge is bounded by the same hold.
        """
        self.took_from(error)
        tried = {attempt["model"] for attempt in self.attempts} | {self.model.id}
        target = error_fallback(
            self.runtime.federation, self.model, Failure.of(error), self.pathway, tried, self.reserved
        )
        if target is None:
            return False
        self.fallback_from = self.fallback_from or self.model.id
        self.fallen_back = True
        self.model = target
        self.ctx.model = target
        return True

    def elapsed_ms(self) -> int:
        """Milliseconds since the call was admitted."""
        return int((time.perf_counter() - self.started) * 1000)

    def usage_row(
        self, status: str, http_status: int, error_type: str | None = None, classes: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """The `usage_records` row for this call; `classes` are its price's per-class costs in picocredits."""
        usage = self.ctx.metering.usage
        return {
            **{f"{name}_picocredits": cost for name, cost in (classes or {}).items()},
            "request_id": self.request_id,
            "idempotency_key": self.idempotency_key,
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
            "cache_write_tokens": usage.cache_write_tokens,
            "duration_ms": self.elapsed_ms(),
            "ttfb_ms": self.ctx.metering.ttfb_ms,
            "usage_source": self.usage_source,
            "attempts": self.attempts or None,
            "key_name": self.key_name,
            "created_at_ms": now_ms(),
        }

    def record(self, usage: Usage, action_charge: ChargeDraft | None, ttfb_ms: int | None) -> None:
        """Take the provider's usage, action charge and time to first byte into the context."""
        self.ctx.metering.add_usage(usage)
        if action_charge is not None:
            self.ctx.metering.set_charge(action_charge)
        if ttfb_ms is not None and self.ctx.metering.ttfb_ms is None:
            self.ctx.metering.ttfb_ms = ttfb_ms

    def estimate(self, usage: Usage) -> None:
        """Bill from metered tokens: the upstream's report never arrived."""
        self.ctx.metering.set_usage(usage)
        self.usage_source = "estimated"

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
                retries=max(0, len(self.attempts) - 1),
                fell_back=self.fallen_back,
                admitted=self._admitted(),
            )
        )

    def _admitted(self) -> str:
        if self.admission is None:
            return "none"
        return "lease" if self.admission.ticket is not None else "hold"

    def record_report(self, report: dict[str, Any]) -> None:
        """Take a streamed `{usage, charge, ttfb_ms}` report from the provider deployment into the context."""
        charge = report.get("charge")
        self.took(list(report.get("attempts") or []), report.get("key_name"))
        self.record(
            Usage.model_validate(report.get("usage") or {}),
            ChargeDraft.model_validate(charge) if charge else None,
            report.get("ttfb_ms"),
        )

    async def succeed(self, output: Any, status: str = "ok", http_status: int = 200) -> ChargeDraft | None:
        """Settle the charge with the usage row (durable on return), then run `after` hooks.

        Returns the charge as applied: the Ledger never takes more than the call's hold.
        """
        self.runtime.renewer.untrack(self.key, self.account)
        self.ctx.output = output
        self.ctx.duration_ms = self.elapsed_ms()
        resolved = resolve_priced_charge(self.ctx.metering.charge, self.model, self.model.provider, self.ctx, output)
        charge = resolved.draft
        amount = charge.amount_microcredits if charge is not None else 0
        if amount > 0 and not self.reserved:
            raise unbounded_charge(self.model)
        row = self.usage_row(status, http_status, classes=resolved.classes)
        if self.reserved:
            ticket = self.admission.ticket if self.admission is not None else None
            applied = await self._settle(
                PendingSettle(
                    key=self.key,
                    user_id=self.account,
                    amount=amount,
                    ref=charge.ref if charge else None,
                    note=charge.note if charge else None,
                    metadata=charge.metadata if charge else None,
                    usage=row,
                    lease=ticket.lease if ticket is not None else None,
                    lease_hold=ticket.amount if ticket is not None else 0,
                )
            )
            if charge is not None and applied != amount:
                charge = charge.model_copy(update={"amount_microcredits": applied})
            amount = applied
        else:
            await self.runtime.ledger.record_usage(row)
        self.settled = True
        self._true_up(amount)
        self.report(status, amount)
        try:
            await run_after(self.ctx, self.chain)
        except Exception:
            # The answer is paid for: an after hook's failure is the operator's to see, not the caller's.
            logger.exception("after hook failed for %s (the call is settled)", self.request_id)
        return charge

    async def _settle(self, pending: PendingSettle) -> int:
        """Settle with the Ledger, or, when it cannot be reached, durably in the outbox it drains; the charge."""
        ticket = self.admission.ticket if self.admission is not None else None
        try:
            settled = await pending.apply(self.runtime.ledger)
        except DowncityHTTPError as error:
            if error.status < 500:
                if ticket is not None and self.runtime.leases is not None:
                    self.runtime.leases.released(ticket)
                raise
            logger.warning("settle of %s went to the outbox: %s", self.request_id, error.message)
            await Outbox(self.runtime.db).put(pending)
            # Owed from the lease until the outbox drains: this replica must not admit that credit again.
            return pending.amount
        if ticket is not None and self.runtime.leases is not None:
            self.runtime.leases.settled(ticket, settled)
        return settled.entry.amount_microcredits if settled.entry is not None else 0

    async def fail(self, error: DowncityHTTPError, status: str = "error") -> None:
        """Release any hold, write the error usage row, then run `on_error` hooks."""
        if self.settled:
            return
        self.settled = True
        self.runtime.renewer.untrack(self.key, self.account)
        self.ctx.error = error
        self.ctx.duration_ms = self.elapsed_ms()
        row = self.usage_row(status, error.status, error.type)
        ticket = self.admission.ticket if self.admission is not None else None
        if ticket is not None:
            await self.runtime.ledger.record_usage(row)
            if self.runtime.leases is not None:
                self.runtime.leases.released(ticket)
        elif self.reserved:
            await self.runtime.ledger.release(self.key, user_id=self.account, usage=row)
        else:
            await self.runtime.ledger.record_usage(row)
        self._true_up(0)
        self.report(status, error_type=error.type)
        await run_on_error(self.ctx, self.chain)


def caller_timeout_ms(value: Any) -> int | None:
    """The caller's total timeout (`timeout_ms`, or the `X-Downcity-Timeout-Ms` header): 1 ms to 1 hour."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CALLER_TIMEOUT_MS:
        raise invalid(f"timeout_ms must be an integer from 1 to {MAX_CALLER_TIMEOUT_MS}", "timeout_ms")
    return value


async def begin_call(
    runtime: Runtime,
    caller: Caller,
    pathway: str,
    body: dict[str, Any],
    request_id: str,
    idempotency_key: str | None = None,
) -> Call:
    """Resolve, run `before` hooks and admit a call; raises before any provider work on refusal."""
    federation = runtime.federation
    timeout_ms = caller_timeout_ms(body.get("timeout_ms"))
    requested = resolve_model(federation, pathway, body.get("model"))
    model, fallback_from = apply_fallback(federation, requested, extract_media(body), pathway)
    ctx = Context(
        input={name: value for name, value in body.items() if name != "timeout_ms"},
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
        model=model,
        fallback_from=fallback_from,
        ctx=ctx,
        chain=federation.hook_chain(model),
        idempotency_key=idempotency_key,
        timeout_ms=timeout_ms,
    )
    try:
        await run_before(ctx, call.chain)
        call.quota = await admit_quotas(runtime, caller, model, ctx.input)
        try:
            call.admission = await admit(
                runtime.ledger,
                call.key,
                call.account,
                model,
                ctx.input,
                runtime.leases,
                runtime.settings.lease_recall_wait_s,
            )
        except DowncityHTTPError:
            if call.quota is not None:
                await call.quota.refund()
            raise
        call.reserved = call.admission is not None
        if call.admission is not None and call.admission.ticket is None:
            runtime.renewer.track(call, call.key, call.account)
    except DowncityHTTPError as error:
        call.settled = True
        await runtime.ledger.record_usage(call.usage_row("refused", error.status, error.type))
        call.report("refused", error_type=error.type)
        raise
    return call
