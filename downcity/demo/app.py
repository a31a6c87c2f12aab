"""The demo upstream's Starlette application: OpenAI-compatible routes plus inspection routes."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from downcity.demo.chat import ChatCompletions
from downcity.demo.images import ImageJobs
from downcity.demo.recording import RequestLog
from downcity.demo.wire import dumps, handle_downcity_error, handle_http_exception, json_response
from downcity.errors import DowncityHTTPError

_ANNOUNCEMENT = dumps(
    {
        "demo": True,
        "name": "downcity-demo-upstream",
        "message": "DEMO upstream: deterministic fake replies for demos, tests and benchmarks. Not a real AI provider.",
        "routes": [
            "POST /v1/chat/completions",
            "POST /v1/images/jobs",
            "GET /v1/images/jobs/{id}",
            "GET /_demo/requests",
            "GET /_demo/jobs/{id}",
            "POST /_demo/reset",
        ],
    }
)


async def announce(_request: Request) -> Response:
    """`GET /`: say loudly that this is a demo."""
    return Response(_ANNOUNCEMENT, media_type="application/json")


def build_demo_app() -> Starlette:
    """A fresh demo upstream application with its own request log and jobs."""
    log = RequestLog()
    chat = ChatCompletions(log)
    images = ImageJobs(log)

    async def recorded_requests(_request: Request) -> Response:
        return json_response({"items": [item.to_json() for item in log.items()]})

    async def reset(_request: Request) -> Response:
        log.clear()
        images.clear()
        return json_response({"reset": True})

    routes = [
        Route("/", announce, methods=["GET"]),
        Route("/v1/chat/completions", chat.create, methods=["POST"]),
        Route("/v1/images/jobs", images.create, methods=["POST"]),
        Route("/v1/images/jobs/{job_id}", images.poll, methods=["GET"]),
        Route("/_demo/requests", recorded_requests, methods=["GET"]),
        Route("/_demo/jobs/{job_id}", images.inspect, methods=["GET"]),
        Route("/_demo/reset", reset, methods=["POST"]),
    ]
    handlers = {DowncityHTTPError: handle_downcity_error, HTTPException: handle_http_exception}
    return Starlette(routes=routes, exception_handlers=handlers)
