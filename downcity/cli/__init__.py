"""The `downcity` command line for a running Federation: admin, usage and profile commands over HTTP."""

from downcity.cli.app import app

__all__ = ["app"]
