"""`python -m downcity.demo`: run the DEMO upstream in the foreground."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence

from downcity.demo.app import build_demo_app
from downcity.demo.upstream import bind_socket, build_server, demo_url, run_server


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, printing one ready line once listening."""
    parser = argparse.ArgumentParser(
        prog="python -m downcity.demo",
        description="Run the DEMO OpenAI-compatible upstream (fake replies; not a real AI provider).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    args = parser.parse_args(argv)
    sock = bind_socket(args.host, args.port)
    url = demo_url(args.host, sock.getsockname()[1])

    def announce() -> None:
        print(f"demo upstream listening on {url}", flush=True)

    # uvicorn re-raises SIGINT after its graceful shutdown; a Ctrl+C is a normal way to stop.
    with contextlib.suppress(KeyboardInterrupt):
        run_server(build_server(build_demo_app(), on_ready=announce), sock)


if __name__ == "__main__":
    main()
