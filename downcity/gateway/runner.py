"""`ProviderRunner`: runs one provider's actions for the ingress; each provider deployment wraps one.

The ingress sends an `ActionRequest` (plain data, so it crosses process boundaries) and gets back the
action's output, the upstream usage, the action's own charge and the time to first byte. Billing priority,
hooks and settlement stay in the ingress; the runner never sees other providers' keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx

from downcity.ai.context import Context, EnvReader, coerce_charge
from downcity.ai.helpers import normalize_openai_compatible_body
from downcity.ai.messages import (
    build_assistant_message,
    new_message_id,
    normalize_ai_usage,
    read_openai_compatible_sse_usage,
    trim_trailing_slash,
)
from downcity.ai.openai_client import (
    ChatChunkTranslator,
    OpenAICompatibleClient,
    SSEUsageSniffer,
    message_from_chat_completion,
    with_stream_usage,
)
from downcity.ai.provider import ModelConfig, Provider
from downcity.errors import DowncityHTTPError, invalid
from downcity.gateway.actions import USAGE_CHUNK_TYPE, ActionRequest, OpenAIOutcome, TextOutcome, VideoOutcome
from downcity.gateway.batching import closing_stream, coalesce
from downcity.gateway.resilience import Deadline, Served, StateListener, Upstream
from downcity.gateway.upstream_http import pooled_upstream_client
from downcity.types import ActionResult, ChargeDraft, ImageJobResult, UIMessage, Usage

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The ingress frames every stream itself, so a provider's own framing chunks are dropped.
_INGRESS_CHUNK_TYPES = frozenset({"start", "finish", USAGE_CHUNK_TYPE})


@contextmanager
def _provider_errors(provider_id: str) -> Iterator[None]:
    """Turn a provider's own exceptions into 502s whose message names only the exception type."""
    try:
        yield
    except DowncityHTTPError:
        raise
    except Exception as exc:
        logger.warning("provider %s failed with %s", provider_id, type(exc).__name__)
        raise DowncityHTTPError(
            502, "provider_error", f"provider '{provider_id}' failed ({type(exc).__name__})"
        ) from None


def _metering_summary(ctx: Context, served: Served[Any]) -> dict[str, Any]:
    metering = ctx.metering
    return {
        "usage": metering.usage.model_dump(),
        "charge": metering.charge.model_dump() if metering.charge is not None else None,
        "ttfb_ms": metering.ttfb_ms,
        "attempts": served.attempts,
        "key_name": served.key,
    }


@contextmanager
def _reporting(served: Served[Any]) -> Iterator[None]:
    """A stream failing after its first chunk still reports the attempts that opened it, and their key."""
    try:
        yield
    except DowncityHTTPError as error:
        error.detail.setdefault("attempts", served.attempts)
        error.detail.setdefault("key_name", served.key)
        raise


async def _opened(source: AsyncIterator[T]) -> tuple[T | None, AsyncIterator[T]]:
    """A stream's first item (None when it is empty) and the stream; closed again when the first item fails."""
    try:
        return await anext(source), source
    except StopAsyncIteration:
        return None, source
    except BaseException:
        await source.aclose()  # type: ignore[attr-defined]
        raise


async def _rest(first: T | None, source: AsyncIterator[T], deadline: Deadline | None) -> AsyncIterator[T]:
    """The stream after its first item, each later item bounded by the call's total timeout."""
    async with closing_stream(source):
        if first is None:
            return
        yield first
        total_at = deadline.total_at if deadline is not None else None
        while True:
            try:
                if total_at is None:
                    item = await anext(source)
                else:
                    async with asyncio.timeout(max(0.0, total_at - time.monotonic())):
                        item = await anext(source)
            except StopAsyncIteration:
                return
            except TimeoutError:
                assert deadline is not None
                raise deadline.fired(before_first_byte=False) from None
            yield item


class ProviderRunner:
    """Runs the actions of `provider` for its `models`, with one pooled HTTP client."""

    def __init__(
        self,
        provider: Provider,
        models: Mapping[str, ModelConfig],
        env: EnvReader,
        http: httpx.AsyncClient | None = None,
        upstream: Upstream | None = None,
        on_state_change: StateListener | None = None,
    ) -> None:
        for model_id, model in models.items():
            if model.provider.id != provider.id:
                raise ValueError(f"model '{model_id}' belongs to provider '{model.provider.id}', not '{provider.id}'")
        self.provider = provider
        self.models = dict(models)
        self.env = env
        self._owns_http = http is None
        self.http = http if http is not None else pooled_upstream_client(provider.timeout_s)
        self.upstream = upstream if upstream is not None else Upstream(provider, env, on_change=on_state_change)

    async def aclose(self) -> None:
        """Close the HTTP pool, if the runner created it."""
        if self._owns_http:
            await self.http.aclose()

    async def text(self, req: ActionRequest) -> TextOutcome:
        """Run the text action: the provider's own, else the default built on `create_client`."""
        served = await self.upstream.attempt(self._model(req, "text"), lambda key: self._text(req, key), req.timeout_ms)
        return served.value.model_copy(update={"attempts": served.attempts, "key_name": served.key})

    async def _text(self, req: ActionRequest, key: str | None) -> TextOutcome:
        ctx = self._context(req, "text", key)
        with _provider_errors(self.provider.id):
            if self.provider.defines("text"):
                result = await self.provider.text(ctx)
            else:
                result = await self._default_text(ctx)
            output, usage, charge = _text_result(result)
        if usage != Usage():
            ctx.metering.set_usage(usage)
        if charge is not None:
            ctx.metering.set_charge(charge)
        ctx.metering.mark_first_byte()
        if not output.id:
            output = output.model_copy(update={"id": new_message_id()})
        return TextOutcome(
            output=output, usage=ctx.metering.usage, charge=ctx.metering.charge, ttfb_ms=ctx.metering.ttfb_ms
        )

    async def stream(self, req: ActionRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of UI message stream chunks; the last batch ends with the `data-downcity-usage` chunk.

        Retries and timeouts apply until the first chunk arrives; after it, a failure ends the stream.
        """

        async def open_stream(key: str | None) -> tuple[Context, dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
            ctx = self._context(req, "stream", key)
            source = self._custom_stream(ctx) if self.provider.defines("stream") else self._default_stream(ctx)
            return (ctx, *await _opened(self._guarded(source)))

        served = await self.upstream.attempt(self._model(req, "stream"), open_stream, req.timeout_ms)
        ctx, first, source = served.value
        chunks = _rest(first, source, served.deadline)
        batches = coalesce(chunks, lambda: {"type": USAGE_CHUNK_TYPE, "data": _metering_summary(ctx, served)})
        with _reporting(served):
            async with closing_stream(batches):
                async for batch in batches:
                    yield batch

    async def openai(self, req: ActionRequest) -> OpenAIOutcome:
        """Non-streaming chat/completions: the provider's `openai`, else auto passthrough."""
        model = self._model(req, "openai")
        served = await self.upstream.attempt(model, lambda key: self._openai(req, key), req.timeout_ms)
        return served.value.model_copy(update={"attempts": served.attempts, "key_name": served.key})

    async def _openai(self, req: ActionRequest, key: str | None) -> OpenAIOutcome:
        ctx = self._context(req, "openai", key)
        with _provider_errors(self.provider.id):
            if self.provider.defines("openai"):
                body = await self.provider.openai(ctx)
                if not isinstance(body, dict):
                    raise TypeError("openai() must return a JSON object for a non-streaming request")
            else:
                body = await self._client(ctx).chat(self._passthrough_body(ctx, stream=False))
        ctx.metering.mark_first_byte()
        if ctx.metering.usage == Usage():
            ctx.metering.set_usage(normalize_ai_usage(body.get("usage")))
        return OpenAIOutcome(
            body=body, usage=ctx.metering.usage, charge=ctx.metering.charge, ttfb_ms=ctx.metering.ttfb_ms
        )

    async def openai_stream(self, req: ActionRequest) -> AsyncIterator[bytes | dict[str, Any]]:
        """Streaming chat/completions: upstream SSE bytes unchanged, then one dict of usage and charge."""

        async def open_stream(key: str | None) -> tuple[Context, bytes | None, AsyncIterator[bytes]]:
            ctx = self._context(req, "openai", key)
            source = self._custom_openai_stream(ctx) if self.provider.defines("openai") else self._passthrough(ctx)
            return (ctx, *await _opened(self._guarded(source)))

        served = await self.upstream.attempt(self._model(req, "openai"), open_stream, req.timeout_ms)
        ctx, first, source = served.value
        chunks = _rest(first, source, served.deadline)
        with _reporting(served):
            async with closing_stream(chunks):
                async for data in chunks:
                    yield data
        yield _metering_summary(ctx, served)

    async def image_create(self, req: ActionRequest) -> ImageJobResult:
        """Start an upstream image job."""
        return (await self.upstream.attempt(self._model(req, "image"), lambda key: self._image_create(req, key))).value

    async def _image_create(self, req: ActionRequest, key: str | None) -> ImageJobResult:
        ctx = self._context(req, "image", key)
        with _provider_errors(self.provider.id):
            return _image_result(await self.provider.image_create(ctx))

    async def image_fetch(self, req: ActionRequest) -> ImageJobResult:
        """Poll the upstream for the stored job in `req.job`."""
        if req.job is None:
            raise invalid("image_fetch needs the stored job record", "job")
        ctx = self._context(req, "image")
        with _provider_errors(self.provider.id):
            return _image_result(await self.provider.image_fetch(ctx))

    async def video(self, req: ActionRequest) -> VideoOutcome:
        """Run the provider's video action."""
        ctx = self._context(req, "video")
        with _provider_errors(self.provider.id):
            result = await self.provider.video(ctx)
            if not isinstance(result, dict):
                raise TypeError("video() must return a JSON object")
        return VideoOutcome(
            body=result, usage=ctx.metering.usage, charge=ctx.metering.charge, ttfb_ms=ctx.metering.ttfb_ms
        )

    def _model(self, req: ActionRequest, pathway: str) -> ModelConfig:
        model = self.models.get(req.model_id)
        if model is None:
            raise DowncityHTTPError(422, "unknown_model", f"unknown model '{req.model_id}'", "model")
        if pathway not in model.pathways:
            raise DowncityHTTPError(
                422, "unsupported_pathway", f"model '{model.id}' does not serve '{pathway}'", "model"
            )
        return model

    def _context(self, req: ActionRequest, pathway: str, key: str | None = None) -> Context:
        ctx = Context(
            input=dict(req.input),
            user=req.user,
            city=req.city,
            model=self._model(req, pathway),
            pathway=req.pathway,
            request_id=req.request_id,
            locals=dict(req.locals),
            job=req.job,
            env_reader=self.env,
            http_client=self.http,
        )
        ctx.key_name = key or self.provider.env_key
        return ctx

    def _client(self, ctx: Context) -> OpenAICompatibleClient:
        provider = self.provider
        api_key = ctx.api_key() if provider.env_keys else ""
        base_url = trim_trailing_slash(provider.base_url or "")
        if provider.defines("create_client"):
            client = provider.create_client(api_key, base_url)
        else:
            client = OpenAICompatibleClient(api_key=api_key, base_url=base_url)
        connect_s = self.models[ctx.model.id].timeout_policy.connect_s
        return client.bind(self.http, provider.timeout_s, connect_s)

    async def _default_text(self, ctx: Context) -> ActionResult:
        response = await self._client(ctx).chat(normalize_openai_compatible_body(ctx.input, ctx.model))
        ctx.metering.mark_first_byte()
        return ActionResult(
            output=message_from_chat_completion(response), usage=normalize_ai_usage(response.get("usage"))
        )

    async def _default_stream(self, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        body = normalize_openai_compatible_body(ctx.input, ctx.model)
        translator = ChatChunkTranslator()
        chunks = self._client(ctx).stream_chat(body)
        async with closing_stream(chunks):
            async for chunk in chunks:
                ctx.metering.mark_first_byte()
                usage = read_openai_compatible_sse_usage(chunk)
                if usage is not None:
                    ctx.metering.set_usage(usage)
                for ui_chunk in translator.feed(chunk):
                    yield ui_chunk
        for ui_chunk in translator.finish():
            yield ui_chunk

    async def _custom_stream(self, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        chunks = self.provider.stream(ctx)
        async with closing_stream(chunks):
            async for chunk in chunks:
                if not isinstance(chunk, dict):
                    raise TypeError("stream() must yield UI message stream chunks as dicts")
                ctx.metering.mark_first_byte()
                if chunk.get("type") not in _INGRESS_CHUNK_TYPES:
                    yield chunk

    async def _guarded(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        with _provider_errors(self.provider.id):
            async with closing_stream(source):
                async for chunk in source:
                    yield chunk

    def _passthrough_body(self, ctx: Context, *, stream: bool) -> dict[str, Any]:
        body = {**ctx.input, "model": self.provider.passthrough_model or ctx.model.upstream_model}
        return with_stream_usage(body) if stream else body

    async def _passthrough(self, ctx: Context) -> AsyncIterator[bytes]:
        sniffer = SSEUsageSniffer()
        upstream = self._client(ctx).stream_raw(self._passthrough_body(ctx, stream=True))
        async with closing_stream(upstream):
            async for data in upstream:
                ctx.metering.mark_first_byte()
                sniffer.feed(data)
                yield data
        sniffer.close()
        if sniffer.usage is not None:
            ctx.metering.set_usage(sniffer.usage)

    async def _custom_openai_stream(self, ctx: Context) -> AsyncIterator[bytes]:
        result = await self.provider.openai(ctx)
        if isinstance(result, dict):
            raise TypeError("openai() must return an async iterator of bytes for a streaming request")
        async with closing_stream(result):
            async for data in result:
                if not isinstance(data, bytes | bytearray):
                    raise TypeError("openai() must stream bytes")
                ctx.metering.mark_first_byte()
                yield bytes(data)


def _text_result(value: Any) -> tuple[UIMessage, Usage, ChargeDraft | None]:
    if isinstance(value, ActionResult):
        return value.output, value.usage, value.charge
    if isinstance(value, UIMessage):
        return value, Usage(), None
    if isinstance(value, dict) and "output" in value:
        usage = Usage.model_validate(value.get("usage") or {})
        return _message(value["output"]), usage, coerce_charge(value.get("charge"))
    if isinstance(value, dict):
        return UIMessage.model_validate(value), Usage(), None
    raise TypeError("text() must return an ActionResult, a UIMessage or {'output': ..., 'charge': ...}")


def _message(value: Any) -> UIMessage:
    if isinstance(value, UIMessage):
        return value
    if isinstance(value, str):
        return build_assistant_message(value)
    return UIMessage.model_validate(value)


def _image_result(value: Any) -> ImageJobResult:
    if isinstance(value, ImageJobResult):
        return value
    return ImageJobResult.model_validate(value)
