"""How a stream ends, driven through `downcity.calls.lifecycle` the way the HTTP layer drives it, on both databases.

Each test reads the stream's bytes itself and, to play a client that leaves, closes it (`aclose()`, what Starlette
does on a disconnect) while it waits at a chunk, so what was sent before the end is known to the byte. The
providers are in-process and scripted by the test: a UI stream of one text delta, and an OpenAI stream of exact
SSE bytes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from downcity.ai import AIService, Context, Federation, Provider
from downcity.ai.messages import build_assistant_message
from downcity.auth.caller import Caller
from downcity.calls import lifecycle
from downcity.calls.lifecycle import CLAIM_LEASE_MS, MAX_STORED_STREAM_BYTES
from downcity.calls.replays import ClaimStore, key_hash
from downcity.errors import DowncityHTTPError, conflict
from downcity.http.principal import authenticate_user
from downcity.local import open_local_runtime
from downcity.quotas import Quota
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.store.schema import usage_records
from downcity.types import ChargeDraft, Usage

CITY = "shop"
CREDIT = 100_000
EVENTS_PRICE = 50
DONE_EVENT = b"data: [DONE]\n\n"
# Seven tokens fewer as the prompt and seven fewer as the reply in o200k_base, the tokenizer of unknown models.
JAPANESE = "こんにちは世界、今日はいい天気ですね"


class Words(Provider):
    """A UI stream of the prompt as one text delta; `failure`, when set, is raised right after that delta."""

    failure: DowncityHTTPError | None = None

    async def stream(self, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        text = self.extract_prompt(ctx.input)
        yield {"type": "text-start", "id": "t0"}
        yield {"type": "text-delta", "id": "t0", "delta": text}
        if self.failure is not None:
            raise self.failure
        yield {"type": "text-end", "id": "t0"}
        words = len(text.split())
        ctx.metering.add_usage(Usage(input_tokens=words, output_tokens=words))


class Events(Provider):
    """An OpenAI stream of exactly the bytes in `script`, one write each, then `failure` if set."""

    script: tuple[bytes, ...] = ()
    failure: DowncityHTTPError | None = None

    async def openai(self, ctx: Context) -> AsyncIterator[bytes]:
        script, failure = self.script, self.failure

        async def chunks() -> AsyncIterator[bytes]:
            for data in script:
                yield data
            if failure is not None:
                raise failure

        return chunks()


def _per_token(ctx: Context, output: Any) -> ChargeDraft:
    usage = ctx.metering.usage
    return ChargeDraft(amount_microcredits=usage.input_tokens + 2 * usage.output_tokens)


def _events_price(ctx: Context, output: Any) -> ChargeDraft:
    return ChargeDraft(amount_microcredits=EVENTS_PRICE)


def _content_event(text: str) -> bytes:
    delta = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(delta, separators=(",", ":")).encode() + b"\n\n"


def _content_event_of_size(size: int) -> bytes:
    """A content event of exactly `size` bytes."""
    padding = size - len(_content_event(""))
    event = _content_event("x" * padding)
    assert len(event) == size
    return event


@dataclass
class App:
    runtime: Runtime
    caller: Caller
    words: Words
    events: Events
    outputs: list[Any]
    errors: list[tuple[int, str, str]]

    async def ui(self, prompt: str, key: str | None = None) -> AsyncGenerator[bytes, None]:
        streamed = await lifecycle.ui_stream(self.runtime, self.caller, {"model": "words", "prompt": prompt}, key)
        assert isinstance(streamed.body, AsyncGenerator)
        return streamed.body

    async def chat(self, key: str | None = None) -> AsyncGenerator[bytes, None]:
        body = {"model": "events", "stream": True, "messages": [{"role": "user", "content": "go"}]}
        streamed = await lifecycle.chat_stream(self.runtime, self.caller, body, key)
        assert isinstance(streamed.body, AsyncGenerator)
        return streamed.body

    async def balance(self) -> tuple[int, int]:
        value = await self.runtime.ledger.balance(f"{CITY}/u1")
        return value.balance, value.held

    async def usage_rows(self) -> list[Any]:
        async with self.runtime.db.connect() as conn:
            return list(await conn.execute(select(usage_records)))

    async def usage(self) -> list[tuple[Any, ...]]:
        """(status, http_status, error_type, usage_source, input, output, charge) of every usage row."""
        async with self.runtime.db.connect() as conn:
            rows = await conn.execute(select(usage_records).order_by(usage_records.c.created_at_ms))
            return [
                (
                    r.status,
                    r.http_status,
                    r.error_type,
                    r.usage_source,
                    r.input_tokens,
                    r.output_tokens,
                    r.charge_microcredits,
                )
                for r in rows
            ]


def _note_error(ctx: Context, errors: list[tuple[int, str, str]]) -> None:
    assert ctx.error is not None
    errors.append((ctx.error.status, ctx.error.type, ctx.error.message))


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    words, events = Words("words"), Events("events")
    ai = (
        AIService()
        .use(words.model("words", default="stream", bill=_per_token, hold_microcredits=5_000, upstream_model="gpt-4"))
        .use(events.model("events", default="openai", bill=_events_price, hold_microcredits=EVENTS_PRICE))
    )
    quota = Quota(id="metered", metadata={"plan": "metered"}, requests_per_minute=5)
    federation = Federation(name="stream-ends", quotas=[quota]).use(ai)
    outputs: list[Any] = []
    errors: list[tuple[int, str, str]] = []
    federation.after(lambda ctx: outputs.append(ctx.output))
    federation.on_error(lambda ctx: _note_error(ctx, errors))
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key="test-admin")
    runtime = await open_local_runtime(federation, settings)
    await runtime.cities.create("Shop", city_id=CITY)
    await runtime.refresh()
    await runtime.ledger.credit(f"seed-{uuid.uuid4().hex}", f"{CITY}/u1", CREDIT)
    issued = await runtime.security.issuer.apply(CITY, "u1")
    caller = await authenticate_user(runtime, f"Bearer {issued.user_token}", None)
    yield App(runtime, caller, words, events, outputs, errors)
    await runtime.stop()


async def _read_until(chunks: AsyncGenerator[bytes, None], marker: bytes) -> bytes:
    """The stream's bytes up to and including the chunk that carries `marker`."""
    seen = b""
    async for data in chunks:
        seen += data
        if marker in data:
            return seen
    raise AssertionError(f"the stream ended without {marker!r}: {seen!r}")


async def _read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([data async for data in chunks])


def _message_id(stream: bytes) -> str:
    start = json.loads(stream.split(b"\n\n")[0].removeprefix(b"data: "))
    assert start["type"] == "start"
    message_id: str = start["messageId"]
    return message_id


async def test_a_client_that_leaves_before_any_content_ends_the_call_as_a_499_client_disconnect(app: App) -> None:
    chunks = await app.ui("alpha beta")
    await _read_until(chunks, b'"type":"start"')

    await chunks.aclose()

    assert app.errors == [(499, "client_disconnected", "client disconnected")]
    assert await app.usage() == [("cancelled", 499, "client_disconnected", "upstream", 0, 0, 0)]
    assert await app.balance() == (CREDIT, 0)


async def test_a_stream_left_after_content_stores_exactly_the_bytes_it_sent_for_its_replay(app: App) -> None:
    chunks = await app.ui("alpha beta", key="left-1")
    sent = await _read_until(chunks, b'"type":"text-delta"')
    await chunks.aclose()

    replay = await _read_all(await app.ui("alpha beta", key="left-1"))

    assert replay == sent
    assert len(await app.usage()) == 1


async def test_a_stream_left_after_content_gives_its_after_hooks_the_delivered_message_under_the_call_id(
    app: App,
) -> None:
    chunks = await app.ui("alpha beta")
    sent = await _read_until(chunks, b'"type":"text-delta"')

    await chunks.aclose()

    assert app.outputs == [build_assistant_message("alpha beta", id=_message_id(sent))]


async def test_a_stream_cut_off_before_its_usage_is_estimated_with_its_upstream_models_tokenizer(app: App) -> None:
    app.words.failure = DowncityHTTPError(503, "upstream_unavailable", "the upstream went away")

    await _read_all(await app.ui(JAPANESE))

    # gpt-4 counts in cl100k_base: 22 tokens of prompt, 15 of the delivered text (o200k_base: 15 and 8).
    assert await app.usage() == [("cancelled", 503, None, "estimated", 22, 15, 22 + 2 * 15)]
    assert await app.balance() == (CREDIT - (22 + 2 * 15), 0)


async def test_a_stream_that_fails_after_content_ends_once_and_replays_with_its_error_frame(app: App) -> None:
    app.words.failure = DowncityHTTPError(503, "upstream_unavailable", "the upstream went away")

    first = await _read_all(await app.ui("alpha beta", key="failed-1"))
    replay = await _read_all(await app.ui("alpha beta", key="failed-1"))

    assert first.endswith(b'data: {"type":"error","errorText":"upstream_unavailable: the upstream went away"}\n\n')
    assert replay == first
    assert app.outputs == [build_assistant_message("alpha beta", id=_message_id(first))]


async def test_a_settle_the_ledger_refuses_after_an_early_end_releases_the_hold_with_an_error_row(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise conflict("the hold was already settled")

    monkeypatch.setattr(app.runtime.ledger, "settle", refused)
    chunks = await app.ui("alpha beta")
    await _read_until(chunks, b'"type":"text-delta"')

    await chunks.aclose()

    assert [row[:3] + row[-1:] for row in await app.usage()] == [("error", 409, "idempotency_conflict", 0)]
    assert app.errors == [(409, "idempotency_conflict", "the hold was already settled")]
    assert await app.balance() == (CREDIT, 0)


async def test_a_ui_streams_after_hooks_see_its_answer_under_the_call_id(app: App) -> None:
    stream = await _read_all(await app.ui("alpha beta"))

    assert app.outputs == [build_assistant_message("alpha beta", id=_message_id(stream))]


async def test_a_ui_streams_finish_frame_carries_the_charge_applied(app: App) -> None:
    stream = await _read_all(await app.ui("alpha beta"))

    events = [event.removeprefix(b"data: ") for event in stream.split(b"\n\n") if event]
    finish = json.loads(events[-2])
    # Two words in, two out: 2 + 2 * 2.
    assert (finish["type"], finish["messageMetadata"]["charge"], events[-1]) == (
        "finish",
        {"amount_microcredits": 6, "user_id": None, "ref": None, "note": None, "metadata": {}},
        b"[DONE]",
    )
    assert await app.balance() == (CREDIT - 6, 0)


async def test_an_openai_stream_error_event_keeps_non_ascii_text_as_utf8(app: App) -> None:
    app.events.script = (_content_event("Bonjour"),)
    app.events.failure = DowncityHTTPError(503, "upstream_unavailable", "flux coupé à mi-réponse")

    stream = await _read_all(await app.chat())

    assert stream == _content_event("Bonjour") + (
        'data: {"error":{"type":"upstream_unavailable","message":"flux coupé à mi-réponse"}}\n\n'.encode()
    )


async def test_an_openai_stream_of_exactly_the_replay_limit_is_stored_and_replayed(app: App) -> None:
    app.events.script = (_content_event_of_size(MAX_STORED_STREAM_BYTES - len(DONE_EVENT)), DONE_EVENT)

    first = await _read_all(await app.chat(key="limit-1"))
    replay = await _read_all(await app.chat(key="limit-1"))

    assert (len(first), replay == first) == (MAX_STORED_STREAM_BYTES, True)
    assert await app.balance() == (CREDIT - EVENTS_PRICE, 0)


async def test_an_openai_stream_that_outgrows_the_replay_limit_after_filling_it_exactly_is_not_replayed(
    app: App,
) -> None:
    app.events.script = (_content_event_of_size(MAX_STORED_STREAM_BYTES), _content_event("one more"))

    first = await _read_all(await app.chat(key="over-1"))
    with pytest.raises(DowncityHTTPError) as refused:
        await app.chat(key="over-1")

    assert len(first) == MAX_STORED_STREAM_BYTES + len(_content_event("one more"))
    assert (refused.value.status, refused.value.type) == (409, "idempotency_stream_replay")
    assert await app.balance() == (CREDIT - EVENTS_PRICE, 0)


async def test_a_ui_stream_starts_with_its_quotas_rate_limit_headers(app: App) -> None:
    issued = await app.runtime.security.issuer.apply(CITY, "u1", {"plan": "metered"})
    metered = await authenticate_user(app.runtime, f"Bearer {issued.user_token}", None)

    streamed = await lifecycle.ui_stream(app.runtime, metered, {"model": "words", "prompt": "alpha"}, None)
    await _read_all(streamed.body)

    assert (streamed.headers["x-ratelimit-limit-requests"], streamed.headers["x-ratelimit-remaining-requests"]) == (
        "5",
        "4",
    )


async def test_an_openai_stream_whose_events_together_pass_the_replay_limit_is_not_replayed(app: App) -> None:
    half = _content_event_of_size(MAX_STORED_STREAM_BYTES // 2 + 1)
    app.events.script = (half, half, DONE_EVENT)

    first = await _read_all(await app.chat(key="halves-1"))
    with pytest.raises(DowncityHTTPError) as refused:
        await app.chat(key="halves-1")

    assert first == half + half + DONE_EVENT
    assert (refused.value.status, refused.value.type) == (409, "idempotency_stream_replay")


class Clock:
    """A monotonic clock that moves only when the test sets it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


async def test_a_stream_renews_its_claim_each_time_a_third_of_the_lease_has_passed(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(1_000.0)
    renewals: list[tuple[float, str, str, int]] = []
    finished: list[bool] = []
    both_finished = asyncio.Event()
    renew = ClaimStore.renew

    async def finishing(renewing: Coroutine[Any, Any, bool]) -> bool:
        renewed = await renewing
        finished.append(renewed)
        if len(finished) == 2:
            both_finished.set()
        return renewed

    def noted(store: ClaimStore, key: str, owner: str, lease_ms: int) -> Coroutine[Any, Any, bool]:
        renewals.append((clock.now, key, owner, lease_ms))
        return finishing(renew(store, key, owner, lease_ms))

    monkeypatch.setattr(lifecycle, "time", clock)
    monkeypatch.setattr(ClaimStore, "renew", noted)
    third_s = CLAIM_LEASE_MS / 3 / 1000
    app.events.script = (*(_content_event(f"part {index}") for index in range(4)), DONE_EVENT)
    chunks = await app.chat(key="renewed-1")

    # Sent just before, at, just before the next and at the next third of the lease after the stream began.
    for now in (1_000 + third_s - 0.1, 1_000 + third_s, 1_000 + 2 * third_s - 0.1, 1_000 + 2 * third_s):
        clock.now = now
        await anext(chunks)
    await _read_all(chunks)

    await asyncio.wait_for(both_finished.wait(), 20)

    [row] = await app.usage_rows()
    renewed = (key_hash(CITY, "u1", "openai", "renewed-1"), row.request_id, CLAIM_LEASE_MS)
    assert renewals == [(1_000 + third_s, *renewed), (1_000 + 2 * third_s, *renewed)]


async def test_a_claim_renewal_that_fails_does_not_fail_the_stream(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(1_000.0)
    tried: list[str] = []

    async def failing(store: ClaimStore, key: str, owner: str, lease_ms: int) -> bool:
        tried.append(key)
        raise RuntimeError("claims table unavailable")

    monkeypatch.setattr(lifecycle, "time", clock)
    monkeypatch.setattr(ClaimStore, "renew", failing)
    app.events.script = (_content_event("part 0"), _content_event("part 1"), DONE_EVENT)
    chunks = await app.chat(key="renew-fails-1")
    await anext(chunks)
    clock.now = 1_000 + CLAIM_LEASE_MS / 3 / 1000
    streamed = await _read_all(chunks)

    [row] = await app.usage_rows()
    assert (len(tried), streamed.endswith(DONE_EVENT), row.status) == (1, True, "ok")
