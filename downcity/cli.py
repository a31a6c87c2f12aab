"""The `downcity` command line: commands that talk to a running Federation over HTTP."""

from __future__ import annotations

import typer

app = typer.Typer(help="Downcity: an AI infrastructure runtime on Ray.", no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """Downcity: an AI infrastructure runtime on Ray."""
