"""One call per pathway, from its Idempotency-Key to the last byte: claim, admit, run, then succeed or fail.

Routes parse and frame; everything that happens to a call's money and usage happens here, once per pathway:
`text`, `ui_stream`, `chat`, `chat_stream` and `video`. Each claims the client's key (see `replays`), begins the
call (model, fallback, hooks, hold), calls the provider deployment and ends the call exactly once:

- `succeed` settles the charge with the usage row; a response, or a stream's final frame (`finish` + `[DONE]`,
  or the upstream's own `[DONE]`), is sent only after that commit;
- `fail` releases the hold with an error row, when nothing reached the client;
- a stream that ends early (the client went away, or the upstream failed) after content reached the client is
  billed for what was delivered: the upstream's usage if it arrived, else tokens metered from the delivered text
  and the prompt (`usage_source: "estimated"`), never more than the hold.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from downcity.ai.messages import build_assistant_message
from downcity.auth.caller import Caller
from downcity.calls.call import Call, begin_call, new_request_id
from downcity.calls.delivery import Delivery
from downcity.calls.replays import ClaimScope, ClaimStore, Replay, request_hash
from downcity.calls.sse import DONE, error_frame, frame, frames
from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import USAGE_CHUNK_TYPE
from downcity.runtime import Runtime
from downcity.secrets import SCRUBBER
from downcity.types import ChargeDraft

T = TypeVar("T")

# A stream longer than this is not stored for replay; its replays get 409 `idempotency_stream_replay`.
MAX_STORED_STREAM_BYTES = 4 * 1024 * 1024
# How long a claimed key stays in flight without news of its owner; a dead replica's keys free up after it.
# No upstream call outlives it (provider timeouts are far shorter); a stream renews its claim as it goes.
CLAIM_LEASE_MS = 30 * 60 * 1000


@dataclass(frozen=True)
class Answer:
    """A non-streaming call's response body; `replayed` when it is the stored answer of an earlier call.

    `headers` go with the response (a quota's rate limits)."""

    body: dict[str, Any]
    replayed: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Streamed:
    """A streaming call's bytes and the headers its response starts with."""

    body: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Claim:
    """The call's hold on its client's Idempotency-Key, if it sent one."""

    store: ClaimStore
    key: str | None
    owner: str
    replay: Replay | None = None

    @classmethod
    async def take(
        cls, runtime: Runtime, caller: Caller, pathway: str, body: dict[str, Any], client_key: str | None
    ) -> Claim:
        """Claim `client_key` for a new request id, or learn its stored answer; 409s before any work."""
        claim = cls(ClaimStore(runtime.db), None, new_request_id())
        if client_key is None:
            return claim
        scope = ClaimScope(caller.city_id, caller.user_id, pathway, client_key, request_hash(body))
        claim.key = scope.key_hash
        claim.replay = await claim.store.claim(scope, claim.owner, CLAIM_LEASE_MS)
        return claim

    async def complete(self, body: dict[str, Any], status_code: int = 200) -> None:
        """Store the answer for replays."""
        if self.key is not None:
            await self.store.complete(self.key, self.owner, status_code, body)

    async def abandon(self) -> None:
        """Free the key: nothing was delivered, so a retry may run afresh."""
        if self.key is not None:
            await self.store.abandon(self.key, self.owner)


def _charge_body(charge: ChargeDraft | None) -> dict[str, Any] | None:
    return charge.model_dump() if charge is not None else None


def _call_metadata(call: Call, charge: ChargeDraft | None) -> dict[str, Any]:
    return {"model": call.model.id, "usage": call.ctx.metering.usage.model_dump(), "charge": _charge_body(charge)}


async def _begin(claim: Claim, runtime: Runtime, caller: Caller, pathway: str, body: dict[str, Any]) -> Call:
    try:
        return await begin_call(runtime, caller, pathway, body, claim.owner, claim.key)
    except BaseException:
        await claim.abandon()
        raise


async def text(runtime: Runtime, caller: Caller, body: dict[str, Any], client_key: str | None) -> Answer:
    """One assistant UIMessage; a replay of the same key and body returns the stored message."""
    claim = await Claim.take(runtime, caller, "text", body, client_key)
    if claim.replay is not None:
        return Answer(claim.replay.body, replayed=True)
    call = await _begin(claim, runtime, caller, "text", body)
    try:
        outcome = await _falling_back(call, lambda: runtime.gateway.text(call.model.provider.id, call.action_request()))
        call.took(outcome.attempts, outcome.key_name)
        call.record(outcome.usage, outcome.charge, outcome.ttfb_ms)
        charge = await call.succeed(outcome.output)
    except DowncityHTTPError as error:
        await _fail_unsent(call, claim, error)
        raise
    message = outcome.output.model_copy(update={"id": outcome.output.id or call.request_id})
    message.metadata = {**message.metadata, **_call_metadata(call, charge)}
    result = message.model_dump(mode="json", by_alias=True)
    await claim.complete(result)
    return Answer(result, headers=call.headers)


async def chat(runtime: Runtime, caller: Caller, body: dict[str, Any], client_key: str | None) -> Answer:
    """An OpenAI chat/completions response: the provider's `openai()` or the upstream's, as-is."""
    claim = await Claim.take(runtime, caller, "openai", body, client_key)
    if claim.replay is not None:
        return Answer(claim.replay.body, replayed=True)
    call = await _begin(claim, runtime, caller, "openai", body)
    try:
        outcome = await _falling_back(
            call, lambda: runtime.gateway.openai(call.model.provider.id, call.action_request())
        )
        call.took(outcome.attempts, outcome.key_name)
        call.record(outcome.usage, outcome.charge, None)
        await call.succeed(outcome.body)
    except DowncityHTTPError as error:
        await _fail_unsent(call, claim, error)
        raise
    await claim.complete(outcome.body)
    return Answer(outcome.body, headers=call.headers)


async def video(runtime: Runtime, caller: Caller, body: dict[str, Any], client_key: str | None) -> Answer:
    """A provider's `video` action: its JSON result with the model and charge."""
    claim = await Claim.take(runtime, caller, "video", body, client_key)
    if claim.replay is not None:
        return Answer(claim.replay.body, replayed=True)
    call = await _begin(claim, runtime, caller, "video", body)
    try:
        outcome = await runtime.gateway.video(call.model.provider.id, call.action_request())
        call.record(outcome.usage, outcome.charge, outcome.ttfb_ms)
        charge = await call.succeed(outcome.body)
    except DowncityHTTPError as error:
        await _fail_unsent(call, claim, error)
        raise
    result = {**outcome.body, "metadata": {"model": call.model.id, "charge": _charge_body(charge)}}
    await claim.complete(result)
    return Answer(result, headers=call.headers)


async def _falling_back(call: Call, run: Callable[[], Awaitable[T]]) -> T:
    """Run the call's provider action, moving to the model's error fallbacks while nothing was sent."""
    while True:
        try:
            return await run()
        except DowncityHTTPError as error:
            if not call.fall_back_after(error):
                raise


async def _first_item(call: Call, open_stream: Callable[[], AsyncIterator[T]]) -> tuple[AsyncIterator[T], T | None]:
    """A provider stream and its first item, moving to the model's error fallbacks until one arrives."""
    while True:
        stream = open_stream()
        try:
            return stream, await anext(stream)
        except StopAsyncIteration:
            return stream, None
        except DowncityHTTPError as error:
            await stream.aclose()  # type: ignore[attr-defined]
            if not call.fall_back_after(error):
                raise


async def _fail_unsent(call: Call, claim: Claim, error: DowncityHTTPError) -> None:
    await call.fail(error)
    await claim.abandon()


def _replayed_stream(replay: Replay) -> AsyncIterator[bytes]:
    stored = replay.body.get("sse")
    if not isinstance(stored, str):
        raise DowncityHTTPError(
            409,
            "idempotency_stream_replay",
            "the stream with this Idempotency-Key was too long to store; use a new key",
            "Idempotency-Key",
        )

    async def replay_bytes() -> AsyncIterator[bytes]:
        yield stored.encode()

    return replay_bytes()


@dataclass
class _StreamState:
    """What one stream sent: its bytes (for replay) and the delivery meter (for billing an early end)."""

    call: Call
    claim: Claim
    delivery: Delivery
    sent: list[bytes] = field(default_factory=list)
    size: int = 0
    done: bool = False
    renew_at: float = field(default_factory=lambda: time.monotonic() + CLAIM_LEASE_MS / 3000)
    renewal: asyncio.Task[bool] | None = None

    def keep(self, data: bytes) -> bytes:
        """Remember bytes about to be sent (while they fit the replay store), renewing the claim now and then."""
        if self.claim.key is None:
            return data
        if self.size <= MAX_STORED_STREAM_BYTES:
            self.sent.append(data)
            self.size += len(data)
        now = time.monotonic()
        if now >= self.renew_at:
            self.renew_at = now + CLAIM_LEASE_MS / 3000
            self.renewal = asyncio.create_task(self.claim.store.renew(self.claim.key, self.claim.owner, CLAIM_LEASE_MS))
        return data

    async def _renewed(self) -> None:
        """Wait for a claim renewal still in flight, so none lands after the claim ends (or outlives the call)."""
        if self.renewal is not None:
            await asyncio.gather(self.renewal, return_exceptions=True)

    async def store(self, tail: bytes) -> None:
        """Store the whole stream, `tail` included, for replays."""
        await self._renewed()
        if self.size + len(tail) <= MAX_STORED_STREAM_BYTES:
            await self.claim.complete({"sse": b"".join([*self.sent, tail]).decode()})
        else:
            await self.claim.complete({"too_large": True})

    async def finish(self, tail: bytes) -> bytes:
        """The call is settled: store the whole stream for replays, then hand back its final frame to send."""
        self.done = True
        await self.store(tail)
        return tail

    async def end_early(self, error: DowncityHTTPError | None, tail: bytes = b"") -> None:
        """The stream stopped before its end: bill what was delivered, or release the hold if nothing was."""
        self.done = True
        call = self.call
        if error is not None:
            call.took_from(error)
        if not self.delivery.delivered:
            await call.fail(error or DowncityHTTPError(499, "client_disconnected", "client disconnected"), "cancelled")
            await self._renewed()
            await self.claim.abandon()
            return
        if call.ctx.metering.usage.total_tokens == 0:
            call.estimate(self.delivery.estimate(call.ctx.input, call.model.upstream_model))
        try:
            delivered = build_assistant_message(self.delivery.text, id=call.request_id)
            await call.succeed(delivered, status="cancelled", http_status=error.status if error is not None else 499)
        except DowncityHTTPError as refused:
            await call.fail(refused)
        await self.store(tail)


async def ui_stream(runtime: Runtime, caller: Caller, body: dict[str, Any], client_key: str | None) -> Streamed:
    """Claim and admit the call, then the AI SDK UI message stream of its answer, ending `finish` + `[DONE]`."""
    return await _open_stream(runtime, caller, "stream", body, client_key, _ui_stream, _ui_error)


async def _ui_stream(state: _StreamState) -> AsyncGenerator[bytes, None]:
    call = state.call
    # `start` carries only the message id, so an error fallback may still follow it: no content was sent.
    yield state.keep(frame({"type": "start", "messageId": call.request_id}))
    batches, first = await _first_item(
        call, lambda: call.runtime.gateway.stream(call.model.provider.id, call.action_request())
    )
    async for batch in _chained(first, batches):
        visible = []
        for chunk in batch:
            if chunk.get("type") == USAGE_CHUNK_TYPE:
                call.record_report(chunk.get("data", {}))
                continue
            visible.append(chunk)
        if visible:
            data = state.keep(frames(visible))
            state.delivery.add_ui_chunks(visible)
            yield data
    charge = await call.succeed(build_assistant_message(state.delivery.text, id=call.request_id))
    yield await state.finish(frame({"type": "finish", "messageMetadata": _call_metadata(call, charge)}) + DONE)


def _ui_error(error: DowncityHTTPError) -> bytes:
    return error_frame(error.type, error.message)


async def chat_stream(runtime: Runtime, caller: Caller, body: dict[str, Any], client_key: str | None) -> Streamed:
    """Claim and admit the call, then the upstream's OpenAI SSE bytes as-is; `[DONE]` only after the settle."""
    return await _open_stream(runtime, caller, "openai", body, client_key, _chat_stream, _chat_error)


async def _open_stream(
    runtime: Runtime,
    caller: Caller,
    pathway: str,
    body: dict[str, Any],
    client_key: str | None,
    run: Callable[[_StreamState], AsyncGenerator[bytes, None]],
    error_event: Callable[[DowncityHTTPError], bytes],
) -> Streamed:
    """Claim and admit a streaming call (or replay its stored bytes), then its stream, ended exactly once."""
    claim = await Claim.take(runtime, caller, pathway, body, client_key)
    if claim.replay is not None:
        return Streamed(_replayed_stream(claim.replay))
    call = await _begin(claim, runtime, caller, pathway, body)
    state = _StreamState(call, claim, Delivery())
    return Streamed(_ended_once(state, run(state), error_event), call.headers)


async def _chained(first: T | None, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    """`first` (unless the stream was empty), then the rest of its stream."""
    if first is not None:
        yield first
        async for item in rest:
            yield item


async def _chat_stream(state: _StreamState) -> AsyncGenerator[bytes, None]:
    call = state.call
    items, first = await _first_item(
        call, lambda: call.runtime.gateway.openai_stream(call.model.provider.id, call.action_request())
    )
    async for item in _chained(first, items):
        if isinstance(item, dict):
            call.record_report(item)
            continue
        data = state.delivery.add_openai_bytes(item)
        if data:
            yield state.keep(data)
    await call.succeed(None)
    yield await state.finish(state.delivery.held_back())


def _chat_error(error: DowncityHTTPError) -> bytes:
    event = json.dumps(error.to_body(), ensure_ascii=False, separators=(",", ":"))
    return b"data: " + SCRUBBER.scrub(event).encode() + b"\n\n"


async def _ended_once(
    state: _StreamState, body: AsyncGenerator[bytes, None], error_event: Callable[[DowncityHTTPError], bytes]
) -> AsyncIterator[bytes]:
    """A stream's bytes, ended exactly once: its own final frame, an error event, or billing what it delivered."""
    try:
        async for data in body:
            yield data
    except DowncityHTTPError as error:
        if not state.done:
            ending = error_event(error)
            await state.end_early(error, ending)
            yield ending
    finally:
        await body.aclose()
        if not state.done:
            await asyncio.shield(state.end_early(None))
