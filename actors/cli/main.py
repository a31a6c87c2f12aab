"""The `downcity` script: the library's commands plus those that start, stop and inspect the Ray runtime."""

from __future__ import annotations

import os

from actors.serving import DEFAULT_PORT_BASE, apply_throughput_mode
from downcity.cli import app


def main() -> None:
    """Entry point of the `downcity` script."""
    # Serve reads its mode at import time, so the environment is set before Ray is imported.
    apply_throughput_mode(int(os.environ.get("DOWNCITY_SERVE_PORT_BASE", DEFAULT_PORT_BASE)))
    from actors.cli.lifecycle import down
    from actors.cli.status import status
    from actors.cli.up import up

    app.command(help="Start local Ray, deploy the Federation and serve it on 127.0.0.1.")(up)
    app.command(help="Stop the `downcity up` running from this data dir.")(down)
    app.command(help="Ray, the Serve app and replicas, and Ledger and JobManager health.")(status)
    app()
