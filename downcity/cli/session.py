"""What every HTTP command of the CLI shares: the admin client, error exits, tables and JSON output."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.table import Table

from downcity.cities import ms_to_iso
from downcity.cli.profile import ProfileError, resolve_profile
from downcity.client import AdminClient, DowncityError

# Exit codes: 1 the Federation refused or failed the request, 2 bad usage or configuration.
EXIT_REQUEST_FAILED = 1
EXIT_BAD_USAGE = 2
# One retry: a CLI run should fail fast rather than wait through the client's default backoff.
CLI_RETRIES = 1
# Wider than any table: lets a table be measured at its natural width.
_UNBOUNDED = 100_000

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@dataclass(frozen=True)
class ConnectionOptions:
    """The root options naming the Federation; resolved only when a command needs it."""

    url: str | None
    admin_key: str | None
    profile: str | None


def fail(message: str, code: int = EXIT_REQUEST_FAILED) -> NoReturn:
    """Print `error: <message>` on stderr and exit with `code`."""
    errors.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def _describe(error: DowncityError, url: str) -> str:
    text = f"{error.type}: {error.message}"
    if error.field:
        text += f" (field: {error.field})"
    if error.status == 0:
        text += f" — is a Federation serving {url}?"
    return text


@contextmanager
def admin_client(ctx: typer.Context) -> Iterator[AdminClient]:
    """An AdminClient for the resolved Federation; request failures exit 1 with the server's error."""
    options = ctx.find_object(ConnectionOptions) or ConnectionOptions(None, None, None)
    try:
        profile = resolve_profile(os.environ, url=options.url, admin_key=options.admin_key, profile=options.profile)
    except ProfileError as exc:
        fail(str(exc), EXIT_BAD_USAGE)
    with AdminClient(profile.url, admin_key=profile.admin_key, retries=CLI_RETRIES) as client:
        try:
            yield client
        except DowncityError as error:
            fail(_describe(error, profile.url))


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """Print a model, a list of models or a dict as indented JSON."""
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [item.model_dump(mode="json") for item in value]
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def cell(value: Any) -> str:
    """A table cell: empty for None; numbers print exactly, as integers."""
    return "" if value is None else str(value)


def when(ms: int | None) -> str:
    """An epoch-ms time as ISO-8601 UTC, or empty."""
    return "" if ms is None else ms_to_iso(ms)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows under `columns`, or a one-line note when there are none."""
    if not rows:
        console.print(f"no {title}")
        return
    table = Table(*columns, box=box.MINIMAL, show_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*(cell(value) for value in row))
    # As wide as the rows need: ids and times are worth more whole than cut to fit the terminal.
    needed = console.measure(table, options=console.options.update_width(_UNBOUNDED)).maximum
    Console(highlight=False, width=max(console.width, needed)).print(table)


def print_fields(model: BaseModel, names: Sequence[str]) -> None:
    """Print `name: value` lines for some fields of one model."""
    values = model.model_dump()
    for name in names:
        console.print(f"{name}: {cell(values.get(name))}", markup=False)
