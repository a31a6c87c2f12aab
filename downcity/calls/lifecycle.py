"""One call per pathway, from admission to the last byte: run at the provider, then succeed, fail or disconnect.

Routes parse and frame; everything that happens to a call's money and usage happens here, once per pathway:
`text`, `ui_stream`, `chat`, `chat_stream` and `video`. Each begins the call (model, fallback, hooks,
admission), calls the provider deployment and ends the call exactly once: `succeed` settles the charge with the
usage row, `fail` releases the hold with an error row, and a stream whose client went away is settled for what
the upstream reported (see docs/operators/billing.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from downcity.ai.messages import build_assistant_message
from downcity.auth.caller import Caller
from downcity.calls.call import Call, begin_call
from downcity.calls.replays import ReplayStore, request_hash
from downcity.calls.sse import DONE, error_frame, frame, frames
from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import USAGE_CHUNK_TYPE
from downcity.runtime import Runtime
from downcity.types import ChargeDraft


@dataclass(frozen=True)
class Answer:
    """A non-streaming call's response body; `replayed` when it is the stored answer of an earlier call."""

    body: dict[str, Any]
    replayed: bool = False


def _charge_body(charge: ChargeDraft | None) -> dict[str, Any] | None:
    return charge.model_dump() if charge is not None else None


def _call_metadata(call: Call, charge: ChargeDraft | None) -> dict[str, Any]:
    return {"model": call.model.id, "usage": call.ctx.metering.usage.model_dump(), "charge": _charge_body(charge)}


async def text(runtime: Runtime, caller: Caller, body: dict[str, Any], client_key: str | None) -> Answer:
    """One assistant UIMessage; with `client_key`, a replay of the same body returns the stored message."""
    if not client_key:
        return Answer(await _run_text(await begin_call(runtime, caller, "text", body, None)))
    replays = ReplayStore(runtime.db)
    replay_key = f"text:{caller.city_id}:{caller.user_id}:{client_key}"
    digest = request_hash(body)
    stored = await replays.get(replay_key, caller.user_id, digest)
    if stored is not None:
        return Answer(stored[1], replayed=True)
    result = await _run_text(await begin_call(runtime, caller, "text", body, client_key))
    await replays.put(replay_key, caller.user_id, digest, 200, result)
    return Answer(result)


async def _run_text(call: Call) -> dict[str, Any]:
    try:
        outcome = await call.runtime.gateway.text(call.model.provider.id, call.action_request())
    except DowncityHTTPError as error:
        await call.fail(error)
        raise
    call.record(outcome.usage, outcome.charge, outcome.ttfb_ms)
    charge = await call.succeed(outcome.output)
    message = outcome.output.model_copy(update={"id": outcome.output.id or call.request_id})
    message.metadata = {**message.metadata, **_call_metadata(call, charge)}
    return message.model_dump(mode="json", by_alias=True)


async def ui_stream(
    runtime: Runtime, caller: Caller, body: dict[str, Any], client_key: str | None
) -> AsyncIterator[bytes]:
    """Admit the call, then the AI SDK UI message stream of its answer, ending `finish` + `[DONE]`."""
    call = await begin_call(runtime, caller, "stream", body, client_key)
    return _ui_stream(call)


async def _ui_stream(call: Call) -> AsyncIterator[bytes]:
    text_parts: list[str] = []
    completed = False
    try:
        yield frame({"type": "start", "messageId": call.request_id})
        async for batch in call.runtime.gateway.stream(call.model.provider.id, call.action_request()):
            visible = []
            for chunk in batch:
                if chunk.get("type") == USAGE_CHUNK_TYPE:
                    call.record_report(chunk.get("data", {}))
                    continue
                if chunk.get("type") == "text-delta":
                    text_parts.append(str(chunk.get("delta", "")))
                visible.append(chunk)
            if visible:
                yield frames(visible)
        completed = True
        charge = await call.succeed(build_assistant_message("".join(text_parts), id=call.request_id))
        yield frame({"type": "finish", "messageMetadata": _call_metadata(call, charge)})
        yield DONE
    except DowncityHTTPError as error:
        await call.fail(error)
        yield error_frame(error.type, error.message)
    finally:
        if not completed and not call.settled:
            await asyncio.shield(_settle_disconnect(call, "".join(text_parts)))


async def _settle_disconnect(call: Call, partial_text: str) -> None:
    """Client went away: settle what the upstream reported, else release the hold (see docs/operators/billing.md)."""
    if call.ctx.metering.usage.total_tokens > 0 or call.ctx.metering.charge is not None:
        await call.succeed(build_assistant_message(partial_text, id=call.request_id))
        return
    await call.fail(DowncityHTTPError(499, "client_disconnected", "client disconnected"), status="cancelled")


async def chat(runtime: Runtime, caller: Caller, body: dict[str, Any], client_key: str | None) -> dict[str, Any]:
    """An OpenAI chat/completions response: the provider's `openai()` or the upstream's, as-is."""
    call = await begin_call(runtime, caller, "openai", body, client_key)
    try:
        outcome = await runtime.gateway.openai(call.model.provider.id, call.action_request())
    except DowncityHTTPError as error:
        await call.fail(error)
        raise
    call.record(outcome.usage, outcome.charge, None)
    await call.succeed(outcome.body)
    return outcome.body


async def chat_stream(
    runtime: Runtime, caller: Caller, body: dict[str, Any], client_key: str | None
) -> AsyncIterator[bytes]:
    """Admit the call, then the upstream's OpenAI SSE bytes as-is; a failure ends with an error event."""
    call = await begin_call(runtime, caller, "openai", body, client_key)
    return _chat_stream(call)


async def _chat_stream(call: Call) -> AsyncIterator[bytes]:
    completed = False
    try:
        async for item in call.runtime.gateway.openai_stream(call.model.provider.id, call.action_request()):
            if isinstance(item, dict):
                call.record_report(item)
                continue
            yield item
        completed = True
        await call.succeed(None)
    except DowncityHTTPError as error:
        await call.fail(error)
        yield b"data: " + json.dumps(error.to_body(), ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    finally:
        if not completed and not call.settled:
            await asyncio.shield(_settle_disconnect(call, ""))


async def video(runtime: Runtime, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    """A provider's `video` action: its JSON result with the model and charge."""
    call = await begin_call(runtime, caller, "video", body, None)
    try:
        outcome = await runtime.gateway.video(call.model.provider.id, call.action_request())
    except DowncityHTTPError as error:
        await call.fail(error)
        raise
    call.record(outcome.usage, outcome.charge, outcome.ttfb_ms)
    charge = await call.succeed(outcome.body)
    return {**outcome.body, "metadata": {"model": call.model.id, "charge": _charge_body(charge)}}
