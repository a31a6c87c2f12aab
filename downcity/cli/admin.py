"""`downcity city|token|env|balance …`: the admin routes, from a terminal."""

from __future__ import annotations

import json
import sys
import uuid
from typing import Annotated, Any

import typer

from downcity.cli.session import (
    EXIT_BAD_USAGE,
    JsonOption,
    admin_client,
    console,
    fail,
    print_fields,
    print_json,
    print_table,
    when,
)
from downcity.client import City

city_app = typer.Typer(help="Create, list, pause and activate cities (product boundaries).", no_args_is_help=True)
token_app = typer.Typer(help="Issue and revoke user tokens.", no_args_is_help=True)
env_app = typer.Typer(help="Provider keys: set or rotate, list previews, remove.", no_args_is_help=True)
balance_app = typer.Typer(help="Credit users and read balances and ledger history.", no_args_is_help=True)

CITY_COLUMNS = ("city_id", "name", "status", "created_at", "updated_at")


def _print_cities(cities: list[City], as_json: bool) -> None:
    if as_json:
        print_json(cities)
        return
    print_table("cities", CITY_COLUMNS, [[getattr(city, name) for name in CITY_COLUMNS] for city in cities])


@city_app.command("create")
def city_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="display name")],
    city_id: Annotated[str | None, typer.Option("--id", help="stable id; default generated")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create an active city."""
    with admin_client(ctx) as admin:
        _print_cities([admin.cities.create(name, city_id)], as_json)


@city_app.command("list")
def city_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every city, oldest first."""
    with admin_client(ctx) as admin:
        _print_cities(admin.cities.list(), as_json)


@city_app.command("pause")
def city_pause(ctx: typer.Context, city_id: str, as_json: JsonOption = False) -> None:
    """Refuse the city's calls (on every replica within 2 s)."""
    with admin_client(ctx) as admin:
        _print_cities([admin.cities.pause(city_id)], as_json)


@city_app.command("activate")
def city_activate(ctx: typer.Context, city_id: str, as_json: JsonOption = False) -> None:
    """Serve the city's calls again."""
    with admin_client(ctx) as admin:
        _print_cities([admin.cities.activate(city_id)], as_json)


def parse_metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise typer.BadParameter('must be a JSON object, e.g. \'{"plan": "pro"}\'', param_hint="--metadata")
    return value


@token_app.command("apply")
def token_apply(
    ctx: typer.Context,
    city_id: Annotated[str, typer.Option("--city", help="the token's city")],
    user_id: Annotated[str, typer.Option("--user", help="the product's user id")],
    metadata: Annotated[str | None, typer.Option(help="JSON object hooks read as ctx.user.metadata")] = None,
    ttl: Annotated[int | None, typer.Option(help="lifetime in seconds (default 7 days)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the user token")] = False,
    as_json: JsonOption = False,
) -> None:
    """Issue a user token, as a business backend does after its own login."""
    parsed = parse_metadata(metadata)
    with admin_client(ctx) as admin:
        issued = admin.tokens.apply(city_id=city_id, user_id=user_id, metadata=parsed, ttl=ttl)
    if quiet:
        typer.echo(issued.user_token)
    elif as_json:
        print_json(issued)
    else:
        print_fields(issued, ("user_token", "token_id", "city_id", "user_id", "expires_at"))


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    token_id: Annotated[str | None, typer.Option("--token-id", help="revoke this one token")] = None,
    user_id: Annotated[str | None, typer.Option("--user", help="revoke every token of this user")] = None,
    city_id: Annotated[str | None, typer.Option("--city", help="with --user: only this city's tokens")] = None,
) -> None:
    """Revoke one token by id, or every token a user holds."""
    with admin_client(ctx) as admin:
        revoked = admin.tokens.revoke(token_id=token_id, user_id=user_id, city_id=city_id)
    console.print(f"revoked {revoked}")


def _secret_from_stdin() -> str:
    if sys.stdin.isatty():
        value: str = typer.prompt("value", hide_input=True)
        return value
    value = sys.stdin.read().rstrip("\r\n")
    if not value:
        fail("no value given: pass it as an argument or on stdin", EXIT_BAD_USAGE)
    return value


@env_app.command("set")
def env_set(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="variable name, e.g. OPENAI_API_KEY")],
    value: Annotated[
        str | None, typer.Argument(help="the value; omit to read it from stdin (keeps it out of shell history)")
    ] = None,
) -> None:
    """Set or rotate a provider key; every provider replica uses it within 2 s."""
    secret = value if value is not None else _secret_from_stdin()
    with admin_client(ctx) as admin:
        entry = admin.env.set(key, secret)
    console.print(f"set {entry.key} (preview {entry.preview})", markup=False)


@env_app.command("list")
def env_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Stored keys with previews, never values."""
    with admin_client(ctx) as admin:
        entries = admin.env.list()
    if as_json:
        print_json(entries)
        return
    print_table("keys", ("key", "preview", "updated_at"), [(e.key, e.preview, when(e.updated_at_ms)) for e in entries])


@env_app.command("remove")
def env_remove(ctx: typer.Context, key: str) -> None:
    """Remove a stored key (providers fall back to the process environment)."""
    with admin_client(ctx) as admin:
        removed = admin.env.remove(key)
    console.print(f"removed {key}" if removed else f"{key} was not set", markup=False)


CityOption = Annotated[str, typer.Option("--city", help="the user's city: accounts are per city")]


@balance_app.command("credit")
def balance_credit(
    ctx: typer.Context,
    user_id: str,
    amount: Annotated[int, typer.Argument(min=1, help="integer microcredits (1 USD = 1,000,000)")],
    city: CityOption,
    idempotency_key: Annotated[
        str | None, typer.Option(help="repeat a credit safely with the same key; default a fresh one")
    ] = None,
    note: Annotated[str | None, typer.Option(help="shown in the ledger history")] = None,
    as_json: JsonOption = False,
) -> None:
    """Top up a user's account in a city."""
    key = idempotency_key or f"cli-{uuid.uuid4().hex}"
    with admin_client(ctx) as admin:
        entry = admin.balance.credit(city, user_id, amount, key, note)
    if as_json:
        print_json(entry)
        return
    print_fields(entry, ("id", "account_id", "kind", "amount_microcredits", "balance_after_microcredits", "note"))


@balance_app.command("get")
def balance_get(ctx: typer.Context, user_id: str, city: CityOption, as_json: JsonOption = False) -> None:
    """One account's balance, holds and available credit, in microcredits."""
    with admin_client(ctx) as admin:
        balance = admin.balance.get(city, user_id)
    if as_json:
        print_json(balance)
        return
    print_fields(balance, ("account_id", "balance", "held", "available"))


@balance_app.command("history")
def balance_history(
    ctx: typer.Context,
    user_id: str,
    city: CityOption,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: JsonOption = False,
) -> None:
    """An account's ledger entries, newest first."""
    with admin_client(ctx) as admin:
        entries = admin.balance.history(city, user_id, limit)
    if as_json:
        print_json(entries)
        return
    columns = ("id", "kind", "amount_microcredits", "balance_after_microcredits", "ref", "note", "created_at")
    rows = [
        (e.id, e.kind, e.amount_microcredits, e.balance_after_microcredits, e.ref, e.note, when(e.created_at_ms))
        for e in entries
    ]
    print_table("ledger entries", columns, rows)
