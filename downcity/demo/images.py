"""Async image jobs of the demo upstream: create, poll until ready, with prompt-driven faults."""

from __future__ import annotations

import base64
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response

from downcity.demo.recording import RequestLog, now_ms
from downcity.demo.wire import bearer_key, json_response, markers, read_json_object, required_str
from downcity.errors import DowncityHTTPError, bad_request, not_found

DEFAULT_READY_AFTER_POLLS = 2
DEFAULT_POLL_AFTER_MS = 200
MAX_IMAGES_PER_JOB = 10
# Bounds memory in long benchmarks; far above the number of jobs any test or bench keeps in flight.
JOB_LIMIT = 100_000

Outcome = Literal["succeeded", "failed", "never"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def tiny_png() -> bytes:
    """A valid 1x1 RGB PNG."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    scanline = b"\x00\x4f\x46\xe5"
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(scanline)),
            _png_chunk(b"IEND", b""),
        ]
    )


IMAGE_DATA_URL = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()


@dataclass(slots=True)
class ImageJob:
    """One demo image job and the polls it has received."""

    id: str
    model: str
    n: int
    ready_after_polls: int
    flaky_polls: int
    poll_after_ms: int
    outcome: Outcome
    created_ms: int
    poll_times_ms: list[int] = field(default_factory=list)

    def answer_poll(self) -> dict[str, Any]:
        """Record a poll and answer it: 503 while flaky, running until ready, then the outcome."""
        self.poll_times_ms.append(now_ms())
        answered = len(self.poll_times_ms) - self.flaky_polls
        if answered <= 0:
            raise DowncityHTTPError(503, "demo_fault", "demo upstream: injected flaky poll")
        if self.outcome == "never" or answered <= self.ready_after_polls:
            return {"id": self.id, "status": "running", "poll_after_ms": self.poll_after_ms}
        if self.outcome == "failed":
            return {"id": self.id, "status": "failed", "error": {"message": "content policy violation"}}
        return {
            "id": self.id,
            "status": "succeeded",
            "data": [{"url": IMAGE_DATA_URL}] * self.n,
            "usage": {"images": self.n},
        }

    def inspection(self) -> dict[str, Any]:
        """What `GET /_demo/jobs/{id}` shows."""
        return {
            "id": self.id,
            "model": self.model,
            "n": self.n,
            "ready_after_polls": self.ready_after_polls,
            "poll_count": len(self.poll_times_ms),
            "poll_times_ms": list(self.poll_times_ms),
            "created_ms": self.created_ms,
        }


def _image_count(body: dict[str, Any]) -> int:
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES_PER_JOB:
        raise bad_request(f"'n' must be an integer from 1 to {MAX_IMAGES_PER_JOB}", field="n")
    return n


def _check_size(body: dict[str, Any]) -> None:
    size = body.get("size")
    if size is not None and not isinstance(size, str):
        raise bad_request("'size' must be a string such as '1024x1024'", field="size")


def new_job(model: str, prompt: str, n: int) -> ImageJob:
    """A job whose behaviour follows the markers in its prompt."""
    found = markers(prompt)
    outcome: Outcome = "succeeded"
    if "image-fail" in found:
        outcome = "failed"
    elif "image-never" in found:
        outcome = "never"
    polls = found.get("polls")
    poll_after = found.get("poll-after")
    return ImageJob(
        id="img_" + secrets.token_hex(12),
        model=model,
        n=n,
        ready_after_polls=DEFAULT_READY_AFTER_POLLS if polls is None else polls,
        flaky_polls=found.get("image-flaky") or 0,
        poll_after_ms=DEFAULT_POLL_AFTER_MS if poll_after is None else poll_after,
        outcome=outcome,
        created_ms=now_ms(),
    )


class ImageJobs:
    """The image job routes and the jobs they created."""

    def __init__(self, log: RequestLog) -> None:
        self.log = log
        self._jobs: dict[str, ImageJob] = {}

    async def create(self, request: Request) -> Response:
        """`POST /v1/images/jobs`: queue a job."""
        key = bearer_key(request)
        body = await read_json_object(request)
        model = body.get("model")
        self.log.record(request.url.path, key, model if isinstance(model, str) else None)
        _check_size(body)
        job = new_job(required_str(body, "model"), required_str(body, "prompt"), _image_count(body))
        if len(self._jobs) >= JOB_LIMIT:
            del self._jobs[next(iter(self._jobs))]
        self._jobs[job.id] = job
        return json_response({"id": job.id, "status": "queued", "poll_after_ms": job.poll_after_ms})

    async def poll(self, request: Request) -> Response:
        """`GET /v1/images/jobs/{id}`: the job's current state."""
        key = bearer_key(request)
        job = self._jobs.get(request.path_params["job_id"])
        self.log.record(request.url.path, key, job.model if job else None)
        if job is None:
            raise not_found("no such image job")
        return json_response(job.answer_poll())

    async def inspect(self, request: Request) -> Response:
        """`GET /_demo/jobs/{id}`: poll count and poll times, for tests."""
        job = self._jobs.get(request.path_params["job_id"])
        if job is None:
            raise not_found("no such image job")
        return json_response(job.inspection())

    def clear(self) -> None:
        """Forget every job."""
        self._jobs.clear()
