"""DEMO upstream runner: serves the fake OpenAI-compatible provider with uvicorn.

This is not a real AI provider. It answers `Echo: <last user text>`, runs fake image jobs and injects
faults on request, for `downcity up --demo`, tests and benchmarks (where it is the baseline upstream).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from downcity.demo.app import build_demo_app

_STOP_TIMEOUT_S = 10.0


class _DroppedStreamFilter(logging.Filter):
    """Hides uvicorn's complaint about `[[drop]]` streams, which end unfinished on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


_DROPPED_STREAM_FILTER = _DroppedStreamFilter()


def demo_url(host: str, port: int) -> str:
    """The OpenAI base URL of a demo upstream listening on host:port."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


class DemoServer(uvicorn.Server):
    """A uvicorn server that reports when it starts accepting connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_ready()


def build_server(app: ASGIApp, on_ready: Callable[[], None]) -> DemoServer:
    """A quiet uvicorn server (httptools and uvloop when installed, no access log)."""
    config = uvicorn.Config(
        app,
        loop="auto",
        http="auto",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=2,
    )
    # Added after Config, whose logging setup would otherwise run first and is the one to amend.
    logging.getLogger("uvicorn.error").addFilter(_DROPPED_STREAM_FILTER)
    return DemoServer(config, on_ready)


def run_server(server: uvicorn.Server, sock: socket.socket) -> None:
    """Serve on sock in a new event loop until the server exits."""
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(server.serve(sockets=[sock]))


class DemoUpstream:
    """The demo upstream served from a background thread with its own event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. `http://127.0.0.1:PORT/v1`."""
        return demo_url(self.host, self.port)

    @property
    def root_url(self) -> str:
        """The URL of `/`, where the inspection routes `/_demo/...` live."""
        return self.url.removesuffix("/v1")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("demo upstream is already running")
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        server = build_server(build_demo_app(), on_ready=ready.set)
        thread = threading.Thread(
            target=self._run, args=(server, sock, ready), name="downcity-demo-upstream", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        ready.wait(timeout_s)
        if not server.started:
            self.stop()
            sock.close()
            raise RuntimeError(f"demo upstream did not start on {self.url} within {timeout_s}s")

    @staticmethod
    def _run(server: uvicorn.Server, sock: socket.socket, ready: threading.Event) -> None:
        try:
            run_server(server, sock)
        finally:
            # Also wakes start() when startup failed, so it can report instead of waiting out its timeout.
            ready.set()

    def stop(self) -> None:
        """Stop serving and wait for the thread to finish; a no-op when not running."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(_STOP_TIMEOUT_S)
        self._server, self._thread = None, None

    def __enter__(self) -> DemoUpstream:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
