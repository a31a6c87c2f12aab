"""Client plumbing: retries over real sockets, error parsing, SSE decoding, polling and the public API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

import downcity.client
from downcity.client import AsyncUserClient, DowncityError, ImageJob
from downcity.client import _operations as ops
from downcity.client._base import RequestSpec, StreamDecoder, parse_response, poll_wait, retry_delay
from downcity.client._errors import error_from_response
from downcity.types import TextPart
from tests.conftest import listen_port

GET = RequestSpec("GET", "/v1/balance/me")
PLAIN_POST = RequestSpec("POST", "/v1/ai/text")
SAFE_POST = RequestSpec("POST", "/v1/ai/text", retry_safe=True)


class CountingTransport(httpx.AsyncHTTPTransport):
    """A real HTTP transport that counts the requests it is asked to send."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        return await super().handle_async_request(request)


class MuteServer:
    """A TCP server that reads each request and never answers: it hangs up, or stays silent."""

    def __init__(self, *, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.connections = 0
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        if not self.hang_up:
            await reader.read()
        writer.close()
        await writer.wait_closed()


async def _serve(server: MuteServer) -> AsyncIterator[MuteServer]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    async with listener:
        yield server


@pytest.fixture
async def hang_up() -> AsyncIterator[MuteServer]:
    async for server in _serve(MuteServer(hang_up=True)):
        yield server


@pytest.fixture
async def silent() -> AsyncIterator[MuteServer]:
    async for server in _serve(MuteServer(hang_up=False)):
        yield server


def _client(
    url: str, retries: int = 3, transport: httpx.AsyncBaseTransport | None = None, timeout: float = 30.0
) -> AsyncUserClient:
    return AsyncUserClient(url, city_id="web", user_token="t", retries=retries, transport=transport, timeout=timeout)


def test_public_api_is_explicit() -> None:
    assert downcity.client.__all__ == [
        "AdminClient",
        "AsyncAdminClient",
        "AsyncUserClient",
        "Balance",
        "City",
        "DowncityError",
        "EnvEntry",
        "ImageJob",
        "IssuedToken",
        "Job",
        "LedgerEntry",
        "Model",
        "QuotaInfo",
        "QuotaListing",
        "QuotaUse",
        "UIMessage",
        "UsageRecord",
        "UsageSummaryRow",
        "UserClient",
    ]


async def test_refused_connection_retries_then_raises_connection_error() -> None:
    transport = CountingTransport()
    started = time.monotonic()
    async with _client(f"http://127.0.0.1:{listen_port()}", transport=transport) as client:
        with pytest.raises(DowncityError) as caught:
            await client.ai.text("hi")

    assert (caught.value.status, caught.value.type) == (0, "connection_error")
    assert caught.value.message.startswith("ConnectError after 4 attempts")
    assert transport.attempts == 4
    assert time.monotonic() - started >= 0.1 + 0.2 + 0.4


async def test_zero_retries_makes_one_attempt() -> None:
    transport = CountingTransport()
    async with _client(f"http://127.0.0.1:{listen_port()}", retries=0, transport=transport) as client:
        with pytest.raises(DowncityError) as caught:
            await client.balance()

    assert caught.value.message.startswith("ConnectError after 1 attempt:")
    assert transport.attempts == 1


async def test_dropped_response_is_retried_for_a_read(hang_up: MuteServer) -> None:
    async with _client(hang_up.url, retries=2) as client:
        with pytest.raises(DowncityError) as caught:
            await client.balance()

    assert (caught.value.type, hang_up.connections) == ("connection_error", 3)


async def test_dropped_response_is_not_retried_for_an_unkeyed_post(hang_up: MuteServer) -> None:
    async with _client(hang_up.url, retries=2) as client:
        with pytest.raises(DowncityError) as caught:
            await client.ai.text("hi")

    assert (caught.value.type, hang_up.connections) == ("connection_error", 1)


async def test_dropped_response_is_retried_for_a_keyed_post(hang_up: MuteServer) -> None:
    async with _client(hang_up.url, retries=2) as client:
        with pytest.raises(DowncityError):
            await client.ai.text("hi", idempotency_key="k1")

    assert hang_up.connections == 3


async def test_silent_server_raises_timeout_without_retrying(silent: MuteServer) -> None:
    async with _client(silent.url, timeout=0.2) as client:
        with pytest.raises(DowncityError) as caught:
            await client.balance()

    assert (caught.value.status, caught.value.type, silent.connections) == (0, "timeout", 1)
    assert caught.value.message == "request timed out: ReadTimeout"


def test_backoff_doubles_from_a_tenth_of_a_second() -> None:
    error = httpx.ReadError("reset")

    assert [retry_delay(error, GET, attempt, retries=3) for attempt in range(4)] == [0.1, 0.2, 0.4, None]


def test_connect_error_is_retried_for_any_post() -> None:
    assert retry_delay(httpx.ConnectError("refused"), PLAIN_POST, 0, retries=3) == 0.1


def test_read_error_is_retried_only_when_safe() -> None:
    error = httpx.RemoteProtocolError("gone")

    assert (retry_delay(error, PLAIN_POST, 0, 3), retry_delay(error, SAFE_POST, 0, 3)) == (None, 0.1)


def test_keyed_requests_are_retry_safe() -> None:
    keyed = ops.text("hi", None, None, "k1", {}).request
    unkeyed = ops.text("hi", None, None, None, {}).request

    assert (keyed.idempotent, keyed.headers, unkeyed.idempotent) == (True, {"Idempotency-Key": "k1"}, False)


def test_non_json_error_body_gives_http_error() -> None:
    error = error_from_response(httpx.Response(502, text="<html>Bad Gateway</html>"))

    assert (error.status, error.type, error.message) == (
        502,
        "http_error",
        "HTTP 502: <html>Bad Gateway</html>",
    )


def test_error_body_is_parsed_into_fields() -> None:
    body = {"error": {"type": "invalid_request", "message": "ttl: bad", "field": "ttl"}}

    error = error_from_response(httpx.Response(422, json=body))

    assert (error.status, error.type, error.message, error.field) == (
        422,
        "invalid_request",
        "ttl: bad",
        "ttl",
    )


def test_unexpected_success_body_gives_invalid_response() -> None:
    with pytest.raises(DowncityError) as caught:
        parse_response(httpx.Response(200, json={"unexpected": True}), ops.my_balance())

    assert (caught.value.status, caught.value.type) == (200, "invalid_response")


def test_decoder_skips_comments_and_stops_at_done() -> None:
    decoder = StreamDecoder(200)

    chunks = [decoder.feed(line) for line in [": ping", 'data: {"type":"start"}', "", "data: [DONE]"]]

    assert (chunks, decoder.done) == ([None, {"type": "start"}, None, None], True)


def test_decoder_raises_the_error_chunk() -> None:
    with pytest.raises(DowncityError) as caught:
        StreamDecoder(200).feed('data: {"type":"error","errorText":"upstream_timeout: too slow"}')

    assert (caught.value.type, caught.value.message) == ("upstream_timeout", "too slow")


def test_decoder_keeps_free_form_error_text() -> None:
    with pytest.raises(DowncityError) as caught:
        StreamDecoder(200).feed('data: {"type":"error","errorText":"Something broke"}')

    assert (caught.value.type, caught.value.message) == ("stream_error", "Something broke")


def test_decoder_rejects_a_malformed_chunk() -> None:
    with pytest.raises(DowncityError) as caught:
        StreamDecoder(200).feed("data: {not json")

    assert caught.value.type == "invalid_response"


def test_stream_cut_before_done_is_a_connection_error() -> None:
    decoder = StreamDecoder(200)
    decoder.feed('data: {"type":"start"}')

    with pytest.raises(DowncityError) as caught:
        decoder.finish()

    assert (caught.value.type, caught.value.message) == ("connection_error", "stream ended before [DONE]")


def test_poll_wait_honours_poll_after_ms() -> None:
    job = ImageJob(job_id="j1", status="running", poll_after_ms=250)

    assert poll_wait(job, deadline=100.0, now=10.0) == 0.25


def test_poll_wait_defaults_to_one_second_and_stops_at_the_deadline() -> None:
    job = ImageJob(job_id="j1", status="queued")

    assert (poll_wait(job, 100.0, 10.0), poll_wait(job, 100.0, 99.5)) == (1.0, 0.5)


def test_poll_wait_past_the_deadline_raises_timeout() -> None:
    with pytest.raises(DowncityError) as caught:
        poll_wait(ImageJob(job_id="j1", status="running"), deadline=100.0, now=100.0)

    assert (caught.value.status, caught.value.type) == (0, "timeout")


def test_image_job_keeps_unknown_fields_and_parses_the_result() -> None:
    body = {
        "job_id": "j1",
        "status": "succeeded",
        "result": {"role": "assistant", "parts": [{"type": "text", "text": "done"}], "new_key": 1},
        "progress": 100,
    }

    job = ImageJob.model_validate(body)

    assert (job.done, job.model_extra) == (True, {"progress": 100})
    assert job.result is not None and job.result.parts == [TextPart(text="done")]
