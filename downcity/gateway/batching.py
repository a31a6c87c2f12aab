"""Chunk batching for streams that cross a deployment boundary, and deterministic stream closing.

Every hop between the provider deployment and the ingress costs far more than a chunk, so stream chunks
travel in batches: what arrives within a few milliseconds of a batch's first chunk rides along with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

BATCH_WINDOW_S = 0.005
BATCH_MAX_CHUNKS = 32

T = TypeVar("T")


@asynccontextmanager
async def closing_stream(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Use `stream`, then close it (when it can be closed) even if iteration stopped early.

    An async generator abandoned mid-iteration is otherwise closed only when garbage collected, which
    would hold an upstream connection open.
    """
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _End:
    pass


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_Signal = dict[str, Any] | _End | _Failed


async def coalesce(
    source: AsyncIterator[dict[str, Any]],
    final: Callable[[], dict[str, Any]],
    *,
    window_s: float = BATCH_WINDOW_S,
    max_items: int = BATCH_MAX_CHUNKS,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Batches of chunks, each holding what arrives within `window_s` of its first chunk (at most
    `max_items`); `final()` ends the last batch. A failure in `source` is raised after the batch of
    chunks that preceded it."""
    queue: asyncio.Queue[_Signal] = asyncio.Queue(maxsize=max_items * 4)
    pump = asyncio.create_task(_pump(source, queue))
    pending: _Signal | None = None
    try:
        while True:
            signal = pending if pending is not None else await queue.get()
            if isinstance(signal, _Failed):
                raise signal.error
            batch, pending = (
                ([], signal) if isinstance(signal, _End) else await _gather(queue, signal, window_s, max_items)
            )
            if isinstance(pending, _End):
                yield [*batch, final()]
                return
            yield batch
    finally:
        pump.cancel()
        with suppress(asyncio.CancelledError):
            await pump


async def _gather(
    queue: asyncio.Queue[_Signal], first: dict[str, Any], window_s: float, max_items: int
) -> tuple[list[dict[str, Any]], _Signal | None]:
    """The batch started by `first`, and the end or failure signal that cut it short, if any."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window_s
    batch = [first]
    while len(batch) < max_items:
        following = await _get_until(queue, deadline - loop.time())
        if following is None:
            break
        if not isinstance(following, dict):
            return batch, following
        batch.append(following)
    return batch, None


async def _pump(source: AsyncIterator[dict[str, Any]], queue: asyncio.Queue[_Signal]) -> None:
    try:
        async with closing_stream(source):
            async for item in source:
                await queue.put(item)
    except Exception as exc:
        await queue.put(_Failed(exc))
    else:
        await queue.put(_End())


async def _get_until(queue: asyncio.Queue[_Signal], timeout_s: float) -> _Signal | None:
    with suppress(asyncio.QueueEmpty):
        return queue.get_nowait()
    if timeout_s <= 0:
        return None
    try:
        return await asyncio.wait_for(queue.get(), timeout_s)
    except TimeoutError:
        return None
