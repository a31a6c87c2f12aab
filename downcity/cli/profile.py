"""Where the CLI finds a Federation's URL and admin key: flags, a named profile, env vars, the default profile.

Profiles live in one JSON file (`$DOWNCITY_PROFILE_FILE`, else `~/.config/downcity/profile.json`) that holds
admin keys, so it must be private: it is written 0600 and refused when group or others may read it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

URL_ENV = "DOWNCITY_URL"
ADMIN_KEY_ENV = "DOWNCITY_ADMIN_KEY"
PROFILE_ENV = "DOWNCITY_PROFILE"
PROFILE_FILE_ENV = "DOWNCITY_PROFILE_FILE"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PROFILE = "default"
_PRIVATE_BITS = stat.S_IRWXG | stat.S_IRWXO


class ProfileError(Exception):
    """A profile file or profile that cannot be used, with what to do about it."""


@dataclass(frozen=True)
class Profile:
    """A Federation URL and its admin key."""

    url: str
    admin_key: str = field(repr=False)


def profile_path(environ: Mapping[str, str]) -> Path:
    """`$DOWNCITY_PROFILE_FILE`, else `profile.json` under `$XDG_CONFIG_HOME/downcity` or `~/.config/downcity`."""
    explicit = environ.get(PROFILE_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "downcity" / "profile.json"


def _parse(path: Path, text: str) -> dict[str, Profile]:
    try:
        data = json.loads(text)
    except ValueError:
        raise ProfileError(f"{path} is not valid JSON") from None
    entries = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ProfileError(f'{path} must hold {{"profiles": {{"<name>": {{"url": …, "admin_key": …}}}}}}')
    profiles: dict[str, Profile] = {}
    for name, entry in entries.items():
        url = entry.get("url") if isinstance(entry, dict) else None
        admin_key = entry.get("admin_key") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not isinstance(admin_key, str) or not url or not admin_key:
            raise ProfileError(f"profile {name!r} in {path} needs a non-empty 'url' and 'admin_key'")
        profiles[name] = Profile(url=url, admin_key=admin_key)
    return profiles


def read_profiles(path: Path) -> dict[str, Profile]:
    """Every profile in the file (none when it does not exist); refuses a file others may read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & _PRIVATE_BITS:
        raise ProfileError(f"{path} holds admin keys but its mode is {stat.S_IMODE(mode):04o}; run: chmod 600 {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror}") from None
    return _parse(path, text)


def save_profile(path: Path, name: str, profile: Profile) -> None:
    """Add or replace profile `name`, writing the file atomically with mode 0600."""
    if not name:
        raise ProfileError("a profile needs a name")
    profiles = read_profiles(path)
    profiles[name] = profile
    body = {"profiles": {key: {"url": p.url, "admin_key": p.admin_key} for key, p in sorted(profiles.items())}}
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}")
    # Created 0600 before any byte is written, so the key is never readable by others, even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(body, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _first(values: list[str | None]) -> str | None:
    return next((value for value in values if value), None)


def resolve_profile(
    environ: Mapping[str, str],
    *,
    url: str | None = None,
    admin_key: str | None = None,
    profile: str | None = None,
) -> Profile:
    """The connection to use, each of URL and key from the first layer that has it: flags, the profile named by
    `--profile`/`$DOWNCITY_PROFILE`, `$DOWNCITY_URL`/`$DOWNCITY_ADMIN_KEY`, the `default` profile."""
    named = profile or environ.get(PROFILE_ENV) or None
    layers: list[tuple[str | None, str | None]] = [(url, admin_key)]
    if named is not None:
        path = profile_path(environ)
        chosen = read_profiles(path).get(named)
        if chosen is None:
            raise ProfileError(f"no profile {named!r} in {path}; add it with: downcity profile save --name {named}")
        layers.append((chosen.url, chosen.admin_key))
    layers.append((environ.get(URL_ENV), environ.get(ADMIN_KEY_ENV)))
    if named is None and not (_first([u for u, _ in layers]) and _first([k for _, k in layers])):
        default = read_profiles(profile_path(environ)).get(DEFAULT_PROFILE)
        if default is not None:
            layers.append((default.url, default.admin_key))
    resolved_key = _first([key for _, key in layers])
    if resolved_key is None:
        raise ProfileError(
            f"no admin key: pass --admin-key, set {ADMIN_KEY_ENV}, or save a profile with: downcity profile save"
        )
    resolved_url = _first([u for u, _ in layers]) or DEFAULT_URL
    return Profile(url=resolved_url.rstrip("/"), admin_key=resolved_key)
