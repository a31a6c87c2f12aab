"""The `downcity` console script: the library's commands plus `up`, `down` and `status` for the Ray runtime."""

from actors.cli.main import main

__all__ = ["main"]
