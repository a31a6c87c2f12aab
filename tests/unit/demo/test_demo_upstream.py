"""The demo upstream over real HTTP: chat echo, SSE, fault markers, image jobs, recording, entrypoint."""

from __future__ import annotations

import base64
import itertools
import json
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

import downcity.demo
from downcity.demo import DemoUpstream
from downcity.demo.recording import RequestLog

KEY = "sk-demo-test"
MODEL = "demo-model"
PNG_PREFIX = "data:image/png;base64,"
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def upstream() -> Iterator[DemoUpstream]:
    with DemoUpstream() as running:
        yield running


@pytest.fixture
async def client(upstream: DemoUpstream) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=upstream.url, headers=headers, timeout=5) as http:
        yield http


def chat_body(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def sse_payloads(text: str) -> list[str]:
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature, chunk CRCs and pixel data length."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, payload = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks[kind] = payload
        offset += 12 + length
    assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, color_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color_type) == (8, 2)
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    return width, height


async def create_job(client: httpx.AsyncClient, prompt: str, **extra: Any) -> dict[str, Any]:
    response = await client.post("/images/jobs", json={"model": "demo-image", "prompt": prompt, **extra})
    assert response.status_code == 200
    job: dict[str, Any] = response.json()
    return job


async def poll_statuses(client: httpx.AsyncClient, job_id: str, polls: int) -> list[str]:
    statuses = []
    for _ in range(polls):
        response = await client.get(f"/images/jobs/{job_id}")
        statuses.append(str(response.status_code) if response.status_code != 200 else response.json()["status"])
    return statuses


def test_public_api_is_the_runner_and_the_app_builder() -> None:
    assert downcity.demo.__all__ == ["DemoUpstream", "build_demo_app"]


async def test_root_announces_a_demo_upstream(upstream: DemoUpstream) -> None:
    async with httpx.AsyncClient() as http:
        body = (await http.get(upstream.root_url + "/")).json()
    assert (body["demo"], body["name"]) == (True, "downcity-demo-upstream")


async def test_chat_completion_echoes_the_last_user_message(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "hello demo world"},
    ]
    body = (await client.post("/chat/completions", json={"model": MODEL, "messages": messages})).json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Echo: hello demo world"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == usage(2 + 2 + 2 + 3, 4)


async def test_content_parts_read_text_and_images_as_image_placeholder(client: httpx.AsyncClient) -> None:
    parts = [
        {"type": "text", "text": "what is"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "this"},
    ]
    body = (await client.post("/chat/completions", json=chat_body(parts))).json()
    assert body["choices"][0]["message"]["content"] == "Echo: what is [image] this"
    assert body["usage"] == usage(4, 5)


async def test_official_openai_client_reads_replies_and_streamed_usage(upstream: DemoUpstream) -> None:
    openai = AsyncOpenAI(base_url=upstream.url, api_key=KEY, max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "hello world"}]
    completion = await openai.chat.completions.create(model=MODEL, messages=messages)
    stream = await openai.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    await openai.close()
    assert completion.choices[0].message.content == "Echo: hello world"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == ("Echo: hello world")
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 3)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/chat/completions"), ("POST", "/images/jobs"), ("GET", "/images/jobs/img_x")],
)
@pytest.mark.parametrize("authorization", [None, "Bearer", "Basic c2stZGVtbw=="])
async def test_requests_without_a_bearer_key_get_401(
    upstream: DemoUpstream, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=upstream.url) as http:
        response = await http.request(method, path, json=chat_body("hi"), headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "message": "missing API key: send 'Authorization: Bearer <key>'",
            "type": "authentication_error",
            "param": None,
            "code": "unauthorized",
        }
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": [{"role": "system", "content": "hi"}]}, "messages"),
        ({"model": MODEL, "messages": ["hi"]}, "messages[0]"),
        (chat_body([{"type": "text", "text": 5}]), "messages[0].content[0].text"),
        (chat_body(42), "messages[0].content"),
        (chat_body("hi", stream="yes"), "stream"),
        (chat_body("hi", stream_options=[]), "stream_options"),
        (chat_body("hi [[fail:200]]"), "messages"),
        ([1, 2], "body"),
    ],
)
async def test_invalid_chat_bodies_get_400_naming_the_field(client: httpx.AsyncClient, body: Any, field: str) -> None:
    response = await client.post("/chat/completions", json=body)
    assert response.status_code == 400
    assert (response.json()["error"]["type"], response.json()["error"]["param"]) == (
        "invalid_request_error",
        field,
    )


async def test_non_json_body_gets_400_naming_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", content=b"{not json")
    assert (response.status_code, response.json()["error"]["param"]) == (400, "body")


async def test_stream_sends_role_then_one_delta_per_word_then_stop(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body("hello world", stream=True))
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert [chunk["choices"][0]["delta"] for chunk in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Echo: "},
        {"content": "hello "},
        {"content": "world"},
        {},
    ]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None, None, None, None, "stop"]
    assert {(chunk["object"], chunk["model"], chunk["id"]) for chunk in chunks} == {
        ("chat.completion.chunk", MODEL, chunks[0]["id"])
    }


async def test_stream_without_include_usage_sends_no_usage_chunk(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body("hello world", stream=True))
    chunks = [json.loads(payload) for payload in sse_payloads(response.text)[:-1]]
    assert [("usage" in chunk, len(chunk["choices"])) for chunk in chunks] == [(False, 1)] * 5


async def test_stream_with_include_usage_sends_usage_chunk_before_done(client: httpx.AsyncClient) -> None:
    body = chat_body("hello world", stream=True, stream_options={"include_usage": True})
    payloads = sse_payloads((await client.post("/chat/completions", json=body)).text)
    assert len(payloads) == 7
    usage_chunk = json.loads(payloads[-2])
    assert (usage_chunk["choices"], usage_chunk["usage"]) == ([], usage(2, 3))
    assert payloads[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(400, "invalid_request_error"), (429, "rate_limit_error"), (500, "server_error"), (503, "server_error")],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_fail_marker_answers_that_status_with_an_openai_error(
    client: httpx.AsyncClient, status: int, error_type: str, stream: bool
) -> None:
    response = await client.post("/chat/completions", json=chat_body(f"hi [[fail:{status}]]", stream=stream))
    assert response.status_code == status
    assert response.json() == {
        "error": {
            "message": f"demo upstream: injected failure with HTTP {status}",
            "type": error_type,
            "param": None,
            "code": "demo_fault",
        }
    }


async def test_sleep_marker_delays_the_answer(client: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    response = await client.post("/chat/completions", json=chat_body("hi [[sleep:300]]"))
    assert time.perf_counter() - started >= 0.3
    assert response.json()["choices"][0]["message"]["content"] == "Echo: hi [[sleep:300]]"


async def test_sleep_marker_outlasts_a_shorter_client_timeout(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/chat/completions", json=chat_body("hi [[sleep:500]]"), timeout=0.1)


async def test_malformed_marker_answers_200_with_a_non_json_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body("hi [[malformed]]"))
    assert (response.status_code, response.text) == (200, "this is not json {")


async def test_malformed_marker_breaks_the_stream_after_two_chunks(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body("hi there [[malformed]]", stream=True))
    payloads = sse_payloads(response.text)
    assert [json.loads(payload)["choices"][0]["delta"] for payload in payloads[:2]] == [
        {"role": "assistant", "content": ""},
        {"content": "Echo: "},
    ]
    assert payloads[2:] == ["{this is not json", "[DONE]"]


async def test_drop_marker_closes_the_stream_after_two_chunks(client: httpx.AsyncClient) -> None:
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", "/chat/completions", json=chat_body("a b c [[drop]]", stream=True)) as r:
            async for line in r.aiter_lines():
                if line:
                    lines.append(line)
    assert len(lines) == 2
    assert json.loads(lines[1].removeprefix("data: "))["choices"][0]["delta"] == {"content": "Echo: "}


async def test_slow_stream_marker_spaces_the_chunks(client: httpx.AsyncClient) -> None:
    arrivals: list[float] = []
    payloads: list[str] = []
    async with client.stream("POST", "/chat/completions", json=chat_body("a [[slow-stream:60]]", stream=True)) as r:
        async for line in r.aiter_lines():
            if line:
                arrivals.append(time.perf_counter())
                payloads.append(line.removeprefix("data: "))
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert (len(payloads), payloads[-1]) == (6, "[DONE]")
    assert min(gaps) >= 0.05


async def test_image_job_is_created_queued_with_default_poll_after(client: httpx.AsyncClient) -> None:
    job = await create_job(client, "a cat")
    assert re.fullmatch(r"img_[0-9a-f]{24}", job["id"])
    assert job == {"id": job["id"], "status": "queued", "poll_after_ms": 200}


async def test_image_job_runs_for_two_polls_then_succeeds_with_a_png(client: httpx.AsyncClient) -> None:
    job = await create_job(client, "a cat")
    assert await poll_statuses(client, job["id"], 2) == ["running", "running"]
    body = (await client.get(f"/images/jobs/{job['id']}")).json()
    assert (body["id"], body["status"], body["usage"]) == (job["id"], "succeeded", {"images": 1})
    [image] = body["data"]
    assert image["url"].startswith(PNG_PREFIX)
    assert png_size(base64.b64decode(image["url"].removeprefix(PNG_PREFIX))) == (1, 1)


async def test_running_polls_carry_poll_after(client: httpx.AsyncClient) -> None:
    job = await create_job(client, "a cat")
    body = (await client.get(f"/images/jobs/{job['id']}")).json()
    assert body == {"id": job["id"], "status": "running", "poll_after_ms": 200}


async def test_image_job_returns_n_images(client: httpx.AsyncClient) -> None:
    job = await create_job(client, "cats [[polls:0]]", n=3, size="256x256")
    body = (await client.get(f"/images/jobs/{job['id']}")).json()
    assert (len(body["data"]), body["usage"]) == (3, {"images": 3})


@pytest.mark.parametrize("polls", [0, 1, 4])
async def test_polls_marker_sets_how_many_polls_answer_running(client: httpx.AsyncClient, polls: int) -> None:
    job = await create_job(client, f"a cat [[polls:{polls}]]")
    assert await poll_statuses(client, job["id"], polls + 2) == ["running"] * polls + ["succeeded"] * 2


async def test_image_fail_marker_fails_the_job_when_ready(client: httpx.AsyncClient) -> None:
    job = await create_job(client, "a cat [[image-fail]] [[polls:1]]")
    assert await poll_statuses(client, job["id"], 1) == ["running"]
    body = (await client.get(f"/images/jobs/{job['id']}")).json()
    assert body == {"id": job["id"], "status": "failed", "error": {"message": "content policy violation"}}


async def test_image_never_marker_keeps_the_job_running(client: httpx.AsyncClient) -> None:
    job = await create_job(client, "a cat [[image-never]]")
    assert await poll_statuses(client, job["id"], 6) == ["running"] * 6


async def test_image_flaky_marker_answers_503_to_the_first_polls(client: httpx.AsyncClient) -> None:
    job = await create_job(client, "a cat [[image-flaky:2]] [[polls:1]]")
    assert await poll_statuses(client, job["id"], 4) == ["503", "503", "running", "succeeded"]


async def test_poll_after_marker_sets_poll_after_ms(client: httpx.AsyncClient) -> None:
    job = await create_job(client, "a cat [[poll-after:750]]")
    running = (await client.get(f"/images/jobs/{job['id']}")).json()
    assert (job["poll_after_ms"], running["poll_after_ms"]) == (750, 750)


async def test_demo_jobs_reports_poll_count_and_poll_times(client: httpx.AsyncClient, upstream: DemoUpstream) -> None:
    job = await create_job(client, "a cat [[image-flaky:1]]")
    before = time.time_ns() // 1_000_000
    await poll_statuses(client, job["id"], 3)
    after = time.time_ns() // 1_000_000
    seen = (await client.get(f"{upstream.root_url}/_demo/jobs/{job['id']}")).json()
    assert (seen["poll_count"], len(seen["poll_times_ms"])) == (3, 3)
    assert before <= seen["poll_times_ms"][0] <= seen["poll_times_ms"][1] <= seen["poll_times_ms"][2] <= after


async def test_unknown_image_job_gets_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/images/jobs/img_missing")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "no such image job",
        "type": "not_found_error",
        "param": None,
        "code": "not_found",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "a cat"}, "model"),
        ({"model": "demo-image"}, "prompt"),
        ({"model": "demo-image", "prompt": "a cat", "n": 0}, "n"),
        ({"model": "demo-image", "prompt": "a cat", "n": True}, "n"),
        ({"model": "demo-image", "prompt": "a cat", "size": 512}, "size"),
    ],
)
async def test_invalid_image_jobs_get_400_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/images/jobs", json=body)
    assert (response.status_code, response.json()["error"]["param"]) == (400, field)


async def test_requests_are_recorded_with_path_key_and_model_newest_last(upstream: DemoUpstream) -> None:
    async with httpx.AsyncClient(base_url=upstream.url) as http:
        await http.post(upstream.root_url + "/_demo/reset")
        before = time.time_ns() // 1_000_000
        await http.post("/chat/completions", json=chat_body("hi"), headers={"Authorization": "Bearer key-a"})
        job = (
            await http.post(
                "/images/jobs",
                json={"model": "demo-image", "prompt": "a cat"},
                headers={"Authorization": "Bearer key-b"},
            )
        ).json()
        await http.get(f"/images/jobs/{job['id']}", headers={"Authorization": "Bearer key-c"})
        after = time.time_ns() // 1_000_000
        items = (await http.get(upstream.root_url + "/_demo/requests")).json()["items"]
    assert [(item["path"], item["key"], item["model"]) for item in items] == [
        ("/v1/chat/completions", "key-a", MODEL),
        ("/v1/images/jobs", "key-b", "demo-image"),
        (f"/v1/images/jobs/{job['id']}", "key-c", "demo-image"),
    ]
    assert all(before <= item["time_ms"] <= after for item in items)


async def test_reset_forgets_requests_and_jobs(client: httpx.AsyncClient, upstream: DemoUpstream) -> None:
    job = await create_job(client, "a cat")
    reset = await client.post(upstream.root_url + "/_demo/reset")
    assert reset.json() == {"reset": True}
    assert (await client.get(upstream.root_url + "/_demo/requests")).json() == {"items": []}
    assert (await client.get(f"{upstream.root_url}/_demo/jobs/{job['id']}")).status_code == 404


def test_request_log_keeps_only_the_last_1000_requests() -> None:
    log = RequestLog()
    for index in range(1001):
        log.record("/v1/chat/completions", f"key-{index}", MODEL)
    items = log.items()
    assert (len(items), items[0].key, items[-1].key) == (1000, "key-1", "key-1000")


def test_stopped_upstream_refuses_connections() -> None:
    with DemoUpstream() as running:
        root_url = running.root_url
        assert httpx.get(root_url + "/").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(root_url + "/")


def test_module_entrypoint_prints_its_ready_line_and_serves() -> None:
    command = [sys.executable, "-m", "downcity.demo", "--host", "127.0.0.1", "--port", "0"]
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.fullmatch(r"demo upstream listening on (http://127\.0\.0\.1:\d+/v1)\n", line)
            assert match is not None, line
            answer = httpx.post(
                match[1] + "/chat/completions", json=chat_body("ping"), headers={"Authorization": "Bearer k"}
            )
            assert answer.json()["choices"][0]["message"]["content"] == "Echo: ping"
        finally:
            process.terminate()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells how it stopped.
    assert process.returncode == -signal.SIGTERM


async def test_fail_times_marker_fails_a_text_only_its_first_n_times(client: httpx.AsyncClient) -> None:
    body = chat_body("flaky once [[fail:500]] [[fail-times:1]]")
    statuses = [(await client.post("/chat/completions", json=body)).status_code for _ in range(3)]
    assert statuses == [500, 200, 200]


async def test_retry_after_markers_set_the_failure_headers(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/chat/completions", json=chat_body("busy [[fail:429]] [[retry-after:2]] [[retry-after-ms:1500]]")
    )
    assert (response.status_code, response.headers["retry-after"], response.headers["retry-after-ms"]) == (
        429,
        "2",
        "1500",
    )


async def test_drop_marker_with_a_count_closes_the_stream_after_that_many_chunks(client: httpx.AsyncClient) -> None:
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", "/chat/completions", json=chat_body("a b c d [[drop:4]]", stream=True)) as r:
            async for line in r.aiter_lines():
                if line:
                    lines.append(line)
    assert [json.loads(line.removeprefix("data: "))["choices"][0]["delta"] for line in lines] == [
        {"role": "assistant", "content": ""},
        {"content": "Echo: "},
        {"content": "a "},
        {"content": "b "},
    ]


@pytest.mark.parametrize("status", [401, 403, 429])
async def test_a_key_ending_in_a_status_is_refused_with_it(upstream: DemoUpstream, status: int) -> None:
    async with httpx.AsyncClient(base_url=upstream.url, headers={"Authorization": f"Bearer sk-bad-{status}"}) as http:
        response = await http.post("/chat/completions", json=chat_body("hi"))
    assert (response.status_code, response.json()["error"]["code"]) == (status, "demo_fault")
