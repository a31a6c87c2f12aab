"""Secrets stay out of answers and logs: only allow-listed upstream error codes pass through, and every configured
secret value (provider keys, the admin key, the master key) is scrubbed from error bodies and log lines."""

from __future__ import annotations

import logging

import pytest

from downcity.errors import DowncityHTTPError
from downcity.secrets import REDACTED
from tests.conftest import TEST_ADMIN_KEY, TEST_MASTER_KEY
from tests.unit.http.fakes import CANARY_KEY, App

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/ai/text", {"prompt": "hi"}),
        ("/v1/ai/chat/completions", {"messages": HI}),
    ],
)
async def test_an_upstream_error_code_carrying_the_key_is_not_echoed(
    shared_app: App, path: str, body: dict[str, object]
) -> None:
    shared_app.upstream.error_code = CANARY_KEY
    async with shared_app.user() as client:
        response = await client.post(path, json=body)

    assert response.status_code == 502
    assert response.json() == {"error": {"type": "upstream_error", "message": "upstream returned HTTP 401"}}


@pytest.mark.parametrize(
    ("path", "body", "error_text"),
    [
        ("/v1/ai/stream", {"prompt": "hi"}, "upstream_error: upstream returned HTTP 401"),
        ("/v1/ai/chat/completions", {"messages": HI, "stream": True}, "upstream returned HTTP 401"),
    ],
)
async def test_a_streamed_upstream_error_carrying_the_key_is_not_echoed(
    shared_app: App, path: str, body: dict[str, object], error_text: str
) -> None:
    shared_app.upstream.error_code = CANARY_KEY
    async with shared_app.user() as client:
        response = await client.post(path, json=body)

    assert CANARY_KEY not in response.text
    assert error_text in response.text


async def test_an_allow_listed_upstream_error_code_passes_through(shared_app: App) -> None:
    shared_app.upstream.error_code = "invalid_api_key"
    async with shared_app.user() as client:
        response = await client.post("/v1/ai/text", json={"prompt": "hi"})

    assert response.json() == {
        "error": {"type": "upstream_error", "message": "upstream returned HTTP 401 (invalid_api_key)"}
    }


@pytest.mark.parametrize("secret", [CANARY_KEY, TEST_ADMIN_KEY, TEST_MASTER_KEY])
async def test_every_configured_secret_is_scrubbed_from_error_bodies(shared_app: App, secret: str) -> None:
    async def leaky() -> None:
        raise DowncityHTTPError(502, "provider_error", f"provider said: bad key {secret}!", f"key {secret}")

    shared_app.app.add_api_route(f"/leaky/{len(secret)}", leaky)
    async with shared_app.user() as client:
        response = await client.get(f"/leaky/{len(secret)}")

    assert response.json() == {
        "error": {
            "type": "provider_error",
            "message": f"provider said: bad key {REDACTED}!",
            "field": f"key {REDACTED}",
        }
    }


async def test_a_rotated_provider_key_is_scrubbed_from_log_lines_at_once(
    shared_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    rotated = "sk-rotated-0123456789abcdef"
    await shared_app.runtime.env_store.set("FAKE_API_KEY", rotated)
    await shared_app.runtime.env.refresh()
    try:
        with caplog.at_level(logging.WARNING, logger="downcity.test"):
            logging.getLogger("downcity.test").warning("upstream refused %s", rotated)
    finally:
        await shared_app.runtime.env_store.set("FAKE_API_KEY", CANARY_KEY)
        await shared_app.runtime.env.refresh()

    assert [record.getMessage() for record in caplog.records] == [f"upstream refused {REDACTED}"]


async def test_a_traceback_carrying_the_admin_key_is_scrubbed_from_log_lines(
    shared_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="downcity.test"):
        try:
            raise ValueError(f"connect failed with {TEST_ADMIN_KEY}")
        except ValueError:
            logging.getLogger("downcity.test").exception("refresh failed")

    (record,) = caplog.records
    assert record.exc_text is not None
    assert TEST_ADMIN_KEY not in record.exc_text
    assert f"ValueError: connect failed with {REDACTED}" in record.exc_text
