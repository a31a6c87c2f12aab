"""User AI routes: models, text, stream, OpenAI-compatible chat/completions and video."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response, StreamingResponse

from downcity.calls import Call, begin_call
from downcity.errors import DowncityHTTPError
from downcity.helpers import build_assistant_message
from downcity.http.deps import CallerDep, RuntimeDep
from downcity.http.schemas import ChatCompletionRequest, TextRequest, VideoRequest
from downcity.http.sse import DONE, UI_STREAM_HEADERS, USAGE_CHUNK_TYPE, error_frame, frame, frames
from downcity.replays import ReplayStore, request_hash
from downcity.types import ChargeDraft

router = APIRouter(prefix="/v1/ai")
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


def _charge_body(charge: ChargeDraft | None) -> dict[str, Any] | None:
    return charge.model_dump() if charge is not None else None


@router.get("/models")
async def list_models(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """Every registered model, without upstream details."""
    return {"items": [model.to_public() for model in runtime.federation.models.values()]}


async def _run_text(call: Call) -> dict[str, Any]:
    try:
        outcome = await call.runtime.gateway.text(call.model.provider.id, call.action_request())
    except DowncityHTTPError as error:
        await call.fail(error)
        raise
    call.record(outcome.usage, outcome.charge, outcome.ttfb_ms)
    charge = await call.succeed(outcome.output)
    message = outcome.output.model_copy(update={"id": outcome.output.id or call.request_id})
    message.metadata = {
        **message.metadata,
        "model": call.model.id,
        "usage": call.ctx.metering.usage.model_dump(),
        "charge": _charge_body(charge),
    }
    return message.model_dump(mode="json", by_alias=True)


@router.post("/text")
async def text(
    body: TextRequest, runtime: RuntimeDep, caller: CallerDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Generate one assistant UIMessage."""
    payload = body.model_dump(exclude_none=True)
    if not idempotency_key:
        return JSONResponse(await _run_text(await begin_call(runtime, caller, "text", payload, None)))
    replays = ReplayStore(runtime.db)
    replay_key = f"text:{caller.city_id}:{caller.user_id}:{idempotency_key}"
    digest = request_hash(payload)
    stored = await replays.get(replay_key, caller.user_id, digest)
    if stored is not None:
        return JSONResponse(stored[1], status_code=stored[0], headers={"idempotent-replayed": "true"})
    result = await _run_text(await begin_call(runtime, caller, "text", payload, idempotency_key))
    await replays.put(replay_key, caller.user_id, digest, 200, result)
    return JSONResponse(result)


async def _ui_stream(call: Call) -> AsyncIterator[bytes]:
    text_parts: list[str] = []
    completed = False
    try:
        yield frame({"type": "start", "messageId": call.request_id})
        upstream = call.runtime.gateway.stream(call.model.provider.id, call.action_request())
        async for batch in upstream:
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
        metadata = {
            "model": call.model.id,
            "usage": call.ctx.metering.usage.model_dump(),
            "charge": _charge_body(charge),
        }
        yield frame({"type": "finish", "messageMetadata": metadata})
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


@router.post("/stream")
async def stream(
    body: TextRequest, runtime: RuntimeDep, caller: CallerDep, idempotency_key: IdempotencyKey = None
) -> StreamingResponse:
    """Stream one assistant message in the AI SDK UI message stream protocol."""
    call = await begin_call(runtime, caller, "stream", body.model_dump(exclude_none=True), idempotency_key)
    return StreamingResponse(_ui_stream(call), media_type="text/event-stream", headers=UI_STREAM_HEADERS)


async def _openai_stream(call: Call) -> AsyncIterator[bytes]:
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
        yield b"data: " + JSONResponse(error.to_body()).body + b"\n\n"
    finally:
        if not completed and not call.settled:
            await asyncio.shield(_settle_disconnect(call, ""))


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest,
    runtime: RuntimeDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """OpenAI-compatible chat/completions: the provider's `openai()` or auto-passthrough."""
    payload = body.model_dump(exclude_unset=True)
    call = await begin_call(runtime, caller, "openai", payload, idempotency_key)
    if body.stream:
        return StreamingResponse(_openai_stream(call), media_type="text/event-stream")
    try:
        outcome = await runtime.gateway.openai(call.model.provider.id, call.action_request())
    except DowncityHTTPError as error:
        await call.fail(error)
        raise
    call.record(outcome.usage, outcome.charge, None)
    await call.succeed(outcome.body)
    return JSONResponse(outcome.body)


@router.post("/video")
async def video(body: VideoRequest, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """Run a provider's `video` action."""
    payload = body.model_dump(exclude_none=True)
    call = await begin_call(runtime, caller, "video", payload, None)
    try:
        outcome = await runtime.gateway.video(call.model.provider.id, call.action_request())
    except DowncityHTTPError as error:
        await call.fail(error)
        raise
    call.record(outcome.usage, outcome.charge, outcome.ttfb_ms)
    charge = await call.succeed(outcome.body)
    return {**outcome.body, "metadata": {"model": call.model.id, "charge": _charge_body(charge)}}
