"""The `downcity` command line: commands that talk to a running Federation over HTTP."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from downcity.cli.admin import balance_app, city_app, env_app, token_app
from downcity.cli.profile import (
    ADMIN_KEY_ENV,
    DEFAULT_PROFILE,
    Profile,
    ProfileError,
    profile_path,
    read_profiles,
    save_profile,
)
from downcity.cli.quotas import quota_app
from downcity.cli.session import EXIT_BAD_USAGE, ConnectionOptions, console, fail
from downcity.cli.usage import jobs, usage
from downcity.env import preview

app = typer.Typer(help="Downcity: an AI infrastructure runtime on Ray.", no_args_is_help=True, add_completion=False)
profile_app = typer.Typer(help="Save and show connection profiles (a 0600 file).", no_args_is_help=True)


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(help="Federation URL (env DOWNCITY_URL; default http://127.0.0.1:8000)")
    ] = None,
    admin_key: Annotated[str | None, typer.Option(help="admin key (env DOWNCITY_ADMIN_KEY)")] = None,
    profile: Annotated[str | None, typer.Option(help="profile name in the profile file (env DOWNCITY_PROFILE)")] = None,
) -> None:
    """Downcity: an AI infrastructure runtime on Ray."""
    ctx.obj = ConnectionOptions(url=url, admin_key=admin_key, profile=profile)


@profile_app.command("save")
def profile_save(
    url: Annotated[str, typer.Option(help="the Federation's URL")],
    admin_key: Annotated[
        str, typer.Option(prompt=True, hide_input=True, envvar=ADMIN_KEY_ENV, help="the admin key (prompted)")
    ],
    name: Annotated[str, typer.Option(help="profile name")] = DEFAULT_PROFILE,
) -> None:
    """Store a URL and admin key under a name, in a file only you can read."""
    path = profile_path(os.environ)
    try:
        save_profile(path, name, Profile(url=url.rstrip("/"), admin_key=admin_key))
    except ProfileError as exc:
        fail(str(exc), EXIT_BAD_USAGE)
    console.print(f"saved profile {name!r} in {path}", markup=False)


@profile_app.command("show")
def profile_show(name: Annotated[str, typer.Argument(help="profile name")] = DEFAULT_PROFILE) -> None:
    """Show a profile's URL and a preview of its admin key."""
    path = profile_path(os.environ)
    try:
        stored = read_profiles(path).get(name)
    except ProfileError as exc:
        fail(str(exc), EXIT_BAD_USAGE)
    if stored is None:
        fail(f"no profile {name!r} in {path}", EXIT_BAD_USAGE)
    console.print(
        f"profile: {name}\nfile: {path}\nurl: {stored.url}\nadmin_key: {preview(stored.admin_key)}", markup=False
    )


app.add_typer(city_app, name="city")
app.add_typer(token_app, name="token")
app.add_typer(env_app, name="env")
app.add_typer(balance_app, name="balance")
app.add_typer(profile_app, name="profile")
app.add_typer(quota_app, name="quota")
app.command()(usage)
app.command()(jobs)
