"""The user clients: what a product holding a `city_id` and a `user_token` calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from downcity.client import _operations as ops
from downcity.client._async import AsyncClient, AsyncNamespace
from downcity.client._base import client_headers, poll_wait
from downcity.client._models import Balance, ImageJob, Model, UsageRecord
from downcity.client._operations import Messages
from downcity.client._sync import SyncClient, SyncNamespace
from downcity.types import UIMessage

DEFAULT_WAIT_S = 120.0


def _user_headers(city_id: str, user_token: str) -> dict[str, str]:
    return client_headers(user_token, {"X-City-Id": city_id})


class AIResource(SyncNamespace):
    """`client.ai`: text, streaming, image jobs and the model catalog."""

    def text(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        model: str | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> UIMessage:
        """Generate one assistant message from a prompt or a message list."""
        return self._transport.call(ops.text(prompt, messages, model, idempotency_key, extra))

    def stream(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        model: str | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Iterator[dict[str, Any]]:
        """Yield UI message stream chunks (`start`, `text-delta`, …, `finish`) until `[DONE]`."""
        return self._transport.stream(ops.stream(prompt, messages, model, idempotency_key, extra))

    def image_create(
        self, prompt: str, *, model: str | None = None, idempotency_key: str | None = None, **extra: Any
    ) -> ImageJob:
        """Start an image job."""
        return self._transport.call(ops.image_create(prompt, model, idempotency_key, extra))

    def image_result(self, job_id: str) -> ImageJob:
        """The stored state of one of the caller's image jobs."""
        return self._transport.call(ops.image_result(job_id))

    def wait_image(self, job_id: str, *, timeout: float = DEFAULT_WAIT_S) -> ImageJob:
        """Poll until the job succeeds or fails, sleeping `poll_after_ms`; gives up after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.image_result(job_id)
            if job.done:
                return job
            time.sleep(poll_wait(job, deadline, time.monotonic()))

    def models(self) -> list[Model]:
        """Every model the Federation serves."""
        return self._transport.call(ops.models())


class UserClient(SyncClient):
    """Blocking client for one user of one city."""

    def __init__(
        self,
        url: str,
        *,
        city_id: str,
        user_token: str,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, _user_headers(city_id, user_token), timeout=timeout, retries=retries, transport=transport)
        self.ai = AIResource(self._transport)

    def balance(self) -> Balance:
        """The caller's balance."""
        return self._transport.call(ops.my_balance())

    def usage(
        self,
        *,
        model: str | None = None,
        status: str | None = None,
        since: int | str | None = None,
        until: int | str | None = None,
        limit: int = 50,
    ) -> list[UsageRecord]:
        """The caller's own usage records in its city, newest first (`since`/`until` as in `admin.usage`)."""
        filters = {"model": model, "status": status, "since": since, "until": until, "limit": limit}
        return self._transport.call(ops.my_usage(filters))


class AsyncAIResource(AsyncNamespace):
    """`client.ai`: text, streaming, image jobs and the model catalog."""

    async def text(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        model: str | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> UIMessage:
        """Generate one assistant message from a prompt or a message list."""
        return await self._transport.call(ops.text(prompt, messages, model, idempotency_key, extra))

    def stream(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        model: str | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield UI message stream chunks (`start`, `text-delta`, …, `finish`) until `[DONE]`."""
        return self._transport.stream(ops.stream(prompt, messages, model, idempotency_key, extra))

    async def image_create(
        self, prompt: str, *, model: str | None = None, idempotency_key: str | None = None, **extra: Any
    ) -> ImageJob:
        """Start an image job."""
        return await self._transport.call(ops.image_create(prompt, model, idempotency_key, extra))

    async def image_result(self, job_id: str) -> ImageJob:
        """The stored state of one of the caller's image jobs."""
        return await self._transport.call(ops.image_result(job_id))

    # Same signature as the sync client; the deadline spans several polls, not one awaited call.
    async def wait_image(self, job_id: str, *, timeout: float = DEFAULT_WAIT_S) -> ImageJob:  # noqa: ASYNC109
        """Poll until the job succeeds or fails, sleeping `poll_after_ms`; gives up after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.image_result(job_id)
            if job.done:
                return job
            await asyncio.sleep(poll_wait(job, deadline, time.monotonic()))

    async def models(self) -> list[Model]:
        """Every model the Federation serves."""
        return await self._transport.call(ops.models())


class AsyncUserClient(AsyncClient):
    """Asyncio client for one user of one city."""

    def __init__(
        self,
        url: str,
        *,
        city_id: str,
        user_token: str,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, _user_headers(city_id, user_token), timeout=timeout, retries=retries, transport=transport)
        self.ai = AsyncAIResource(self._transport)

    async def balance(self) -> Balance:
        """The caller's balance."""
        return await self._transport.call(ops.my_balance())

    async def usage(
        self,
        *,
        model: str | None = None,
        status: str | None = None,
        since: int | str | None = None,
        until: int | str | None = None,
        limit: int = 50,
    ) -> list[UsageRecord]:
        """The caller's own usage records in its city, newest first (`since`/`until` as in `admin.usage`)."""
        filters = {"model": model, "status": status, "since": since, "until": until, "limit": limit}
        return await self._transport.call(ops.my_usage(filters))
