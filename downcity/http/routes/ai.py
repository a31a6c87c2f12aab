"""User AI routes: models, text, stream, OpenAI-compatible chat/completions and video. Only HTTP lives here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse

from downcity.calls import lifecycle
from downcity.calls.sse import UI_STREAM_HEADERS
from downcity.http.deps import CallerDep, CallerTimeoutDep, IdempotencyKeyDep, RuntimeDep
from downcity.http.schemas import ChatCompletionRequest, TextRequest, VideoRequest

router = APIRouter(prefix="/v1/ai")


def _timed(payload: dict[str, Any], header_ms: int | None) -> dict[str, Any]:
    """The body with the header's timeout as `timeout_ms`, unless the body asks for a shorter one."""
    asked = payload.get("timeout_ms")
    if header_ms is None or (isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked <= header_ms):
        return payload
    return {**payload, "timeout_ms": header_ms}


def _answer(answer: lifecycle.Answer) -> JSONResponse:
    replayed = {"idempotent-replayed": "true"} if answer.replayed else {}
    return JSONResponse(answer.body, headers={**answer.headers, **replayed} or None)


@router.get("/models")
async def list_models(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """Every registered model, without upstream details."""
    return {"items": [model.to_public() for model in runtime.federation.models.values()]}


@router.post("/text")
async def text(
    body: TextRequest,
    runtime: RuntimeDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKeyDep,
    timeout_ms: CallerTimeoutDep,
) -> Response:
    """Generate one assistant UIMessage."""
    payload = _timed(body.model_dump(exclude_none=True), timeout_ms)
    return _answer(await lifecycle.text(runtime, caller, payload, idempotency_key))


@router.post("/stream")
async def stream(
    body: TextRequest,
    runtime: RuntimeDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKeyDep,
    timeout_ms: CallerTimeoutDep,
) -> StreamingResponse:
    """Stream one assistant message in the AI SDK UI message stream protocol."""
    payload = _timed(body.model_dump(exclude_none=True), timeout_ms)
    streamed = await lifecycle.ui_stream(runtime, caller, payload, idempotency_key)
    headers = {**UI_STREAM_HEADERS, **streamed.headers}
    return StreamingResponse(streamed.body, media_type="text/event-stream", headers=headers)


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest,
    runtime: RuntimeDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKeyDep,
    timeout_ms: CallerTimeoutDep,
) -> Response:
    """OpenAI-compatible chat/completions: the provider's `openai()` or auto-passthrough."""
    payload = _timed(body.model_dump(exclude_unset=True), timeout_ms)
    if body.stream:
        streamed = await lifecycle.chat_stream(runtime, caller, payload, idempotency_key)
        return StreamingResponse(streamed.body, media_type="text/event-stream", headers=streamed.headers or None)
    return _answer(await lifecycle.chat(runtime, caller, payload, idempotency_key))


@router.post("/video")
async def video(
    body: VideoRequest, runtime: RuntimeDep, caller: CallerDep, idempotency_key: IdempotencyKeyDep
) -> Response:
    """Run a provider's `video` action."""
    return _answer(await lifecycle.video(runtime, caller, body.model_dump(exclude_none=True), idempotency_key))
