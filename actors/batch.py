"""Batch image generation: prompts fanned out as Ray tasks that drive image jobs through the JobManager.

`generate_images` splits the prompts over at most `max_tasks` streaming Ray tasks. Each task submits its
items to the JobManager actor (which calls the provider's `image_create` and stores the job), waits for
them concurrently and yields each finished item in order. Every item carries the idempotency key
`batch:<batch_id>:<index>`, so a retried task (or a rerun with the same `batch_id`) finds the jobs it
already created: no item is created, or billed, twice. The driver shows a progress bar and returns the
items in input order, with an error on each item that failed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayError, RayTaskError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from actors.jobs import JOB_MANAGER_NAME
from actors.serving import RAY_NAMESPACE
from downcity.errors import DowncityHTTPError

DEFAULT_MAX_TASKS = 8
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class BatchItem:
    """One prompt's outcome: its job (when created), final status, result message or error."""

    index: int
    prompt: str
    job_id: str | None
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was generated."""
        return self.status == "succeeded"


def _error_text(error: BaseException) -> str:
    cause = error.cause if isinstance(error, RayTaskError) else error
    if isinstance(cause, DowncityHTTPError):
        return f"{cause.type}: {cause.message}"
    return f"{type(cause).__name__}: {cause}"


def _finished(item: dict[str, Any], job: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
    if job is None:
        return {**item, "job_id": job_id, "status": "error", "error": "the job vanished"}
    if job["status"] not in ("succeeded", "failed"):
        return {**item, "job_id": job_id, "status": job["status"], "error": "timed out waiting for the job"}
    return {**item, "job_id": job_id, "status": job["status"], "result": job.get("result"), "error": job.get("error")}


@ray.remote(num_cpus=0, max_retries=3)
def _generate_chunk(
    manager: ActorHandle[Any],
    items: list[dict[str, Any]],
    request: dict[str, Any],
    timeout_s: float,
) -> Iterator[dict[str, Any]]:
    """Submit every item at once, then yield each finished item in input order (stable across retries)."""
    submitted: list[Any] = [
        manager.submit.remote(
            request["city_id"],
            request["user_id"],
            {**request["options"], "prompt": item["prompt"]},
            item["key"],
            request["metadata"],
        )
        for item in items
    ]
    waits: list[tuple[dict[str, Any], Any]] = []
    for item, ref in zip(items, submitted, strict=True):
        try:
            job: dict[str, Any] = ray.get(ref)
        except RayError as error:
            waits.append(({**item, "job_id": None, "status": "error", "error": _error_text(error)}, None))
            continue
        waits.append(({**item, "job_id": job["job_id"]}, manager.wait.remote(job["job_id"], timeout_s)))
    for item, wait in waits:
        if wait is None:
            yield item
            continue
        try:
            yield _finished(item, ray.get(wait), item["job_id"])
        except RayError as error:
            yield {**item, "status": "error", "error": _error_text(error)}


def _item(data: dict[str, Any]) -> BatchItem:
    return BatchItem(
        index=data["index"],
        prompt=data["prompt"],
        job_id=data.get("job_id"),
        status=data["status"],
        result=data.get("result"),
        error=data.get("error"),
    )


def generate_images(
    prompts: Sequence[str],
    *,
    city_id: str,
    user_id: str,
    model: str | None = None,
    options: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    batch_id: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_tasks: int = DEFAULT_MAX_TASKS,
    progress: bool = True,
    manager: ActorHandle[Any] | None = None,
) -> list[BatchItem]:
    """Generate one image job per prompt for `user_id` of `city_id`; items come back in input order.

    `options` go into every create body (`size`, `count`…); `metadata` is the user's token metadata that
    hooks and bills see. Reusing a `batch_id` returns the jobs of that batch instead of creating new ones.
    """
    if max_tasks < 1:
        raise ValueError("max_tasks must be at least 1")
    handle = manager if manager is not None else _job_manager()
    batch = batch_id or uuid.uuid4().hex
    items = [{"index": i, "prompt": p, "key": f"batch:{batch}:{i}"} for i, p in enumerate(prompts)]
    request = {
        "city_id": city_id,
        "user_id": user_id,
        "options": {**(options or {}), **({"model": model} if model else {})},
        "metadata": metadata or {},
    }
    tasks = min(max_tasks, len(items))
    chunks = {
        _generate_chunk.remote(handle, items[start::tasks], request, timeout_s): items[start::tasks]
        for start in range(tasks)
    }
    done = _collect(chunks, len(items), progress)
    return [done.get(i) or _lost(item) for i, item in enumerate(items)]


def _job_manager() -> ActorHandle[Any]:
    try:
        handle: ActorHandle[Any] = ray.get_actor(JOB_MANAGER_NAME, namespace=RAY_NAMESPACE)
    except ValueError:
        raise RuntimeError(
            f"no JobManager actor {JOB_MANAGER_NAME!r} in namespace {RAY_NAMESPACE!r}: deploy the app first"
        ) from None
    return handle


def _collect(chunks: dict[Any, list[dict[str, Any]]], total: int, progress: bool) -> dict[int, BatchItem]:
    """Drain the streaming tasks as items finish, advancing the progress bar."""
    done: dict[int, BatchItem] = {}
    columns = (TextColumn("images"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        advance = bar.add_task("images", total=total)
        pending: list[Any] = list(chunks)
        while pending:
            ready_list, pending = ray.wait(pending, num_returns=1)
            ready: Any = ready_list[0]
            try:
                ref = next(ready)
            except StopIteration:
                continue
            pending.append(ready)
            try:
                item = _item(ray.get(ref))
            except RayError as error:
                # The task gave up (after its retries): whatever it had not yielded is lost with this error.
                for lost in chunks[ready]:
                    done.setdefault(lost["index"], _lost(lost, _error_text(error)))
                continue
            done[item.index] = item
            bar.update(advance, completed=len(done))
    return done


def _lost(item: dict[str, Any], error: str = "the batch task ended without this item") -> BatchItem:
    return BatchItem(index=item["index"], prompt=item["prompt"], job_id=None, status="error", error=error)
