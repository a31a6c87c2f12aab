"""Where the CLI finds the URL and admin key: flags, named profile, env vars, default profile; a 0600 file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from downcity.cli import app
from downcity.cli.profile import Profile, ProfileError, profile_path, read_profiles, resolve_profile, save_profile

PROD = Profile(url="https://prod.example", admin_key="dc_admin_prod_secret_value")
STAGING = Profile(url="https://staging.example", admin_key="dc_admin_staging_secret")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "config" / "downcity" / "profile.json"


@pytest.fixture
def saved(path: Path) -> Path:
    save_profile(path, "default", PROD)
    save_profile(path, "staging", STAGING)
    return path


def env(path: Path, **values: str) -> dict[str, str]:
    return {"DOWNCITY_PROFILE_FILE": str(path), **values}


def test_profile_path_honours_the_file_variable_then_xdg_config_home(tmp_path: Path) -> None:
    assert profile_path({"DOWNCITY_PROFILE_FILE": "/x/p.json"}) == Path("/x/p.json")
    assert profile_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "downcity" / "profile.json"


def test_saved_file_and_its_directory_are_private(saved: Path) -> None:
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700


def test_saving_keeps_the_other_profiles(saved: Path) -> None:
    assert read_profiles(saved) == {"default": PROD, "staging": STAGING}


def test_a_file_others_can_read_is_refused_with_the_fix(saved: Path) -> None:
    saved.chmod(0o644)
    with pytest.raises(ProfileError) as caught:
        read_profiles(saved)
    assert str(caught.value) == f"{saved} holds admin keys but its mode is 0644; run: chmod 600 {saved}"


def test_a_malformed_file_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"profiles": {"default": {"url": "https://x"}}}))
    path.chmod(0o600)
    with pytest.raises(ProfileError) as caught:
        read_profiles(path)
    assert str(caught.value) == f"profile 'default' in {path} needs a non-empty 'url' and 'admin_key'"


def test_a_missing_file_holds_no_profiles(path: Path) -> None:
    assert read_profiles(path) == {}


def test_flags_win_over_everything(saved: Path) -> None:
    environ = env(saved, DOWNCITY_URL="https://env.example", DOWNCITY_ADMIN_KEY="env-key", DOWNCITY_PROFILE="staging")
    resolved = resolve_profile(environ, url="https://flag.example/", admin_key="flag-key")
    assert resolved == Profile(url="https://flag.example", admin_key="flag-key")


def test_a_named_profile_wins_over_env_vars(saved: Path) -> None:
    environ = env(saved, DOWNCITY_URL="https://env.example", DOWNCITY_ADMIN_KEY="env-key")
    assert resolve_profile(environ, profile="staging") == STAGING


def test_the_profile_variable_names_a_profile(saved: Path) -> None:
    assert resolve_profile(env(saved, DOWNCITY_PROFILE="staging")) == STAGING


def test_env_vars_win_over_the_default_profile(saved: Path) -> None:
    environ = env(saved, DOWNCITY_URL="https://env.example", DOWNCITY_ADMIN_KEY="env-key")
    assert resolve_profile(environ) == Profile(url="https://env.example", admin_key="env-key")


def test_the_default_profile_fills_what_env_vars_leave_out(saved: Path) -> None:
    assert resolve_profile(env(saved, DOWNCITY_URL="https://env.example")) == Profile(
        url="https://env.example", admin_key=PROD.admin_key
    )


def test_without_any_url_the_local_default_is_used(path: Path) -> None:
    assert resolve_profile(env(path, DOWNCITY_ADMIN_KEY="k")) == Profile(url="http://127.0.0.1:8000", admin_key="k")


def test_an_unknown_named_profile_is_an_error(saved: Path) -> None:
    with pytest.raises(ProfileError) as caught:
        resolve_profile(env(saved), profile="prod-eu")
    assert str(caught.value) == f"no profile 'prod-eu' in {saved}; add it with: downcity profile save --name prod-eu"


def test_no_admin_key_anywhere_is_an_error(path: Path) -> None:
    with pytest.raises(ProfileError) as caught:
        resolve_profile(env(path))
    assert str(caught.value).startswith("no admin key: pass --admin-key, set DOWNCITY_ADMIN_KEY")


def test_a_profile_never_shows_its_key_in_repr() -> None:
    assert PROD.admin_key not in repr(PROD)


def test_profile_save_reads_the_key_from_stdin_and_show_prints_only_a_preview(path: Path) -> None:
    runner = CliRunner()
    saved = runner.invoke(
        app,
        ["profile", "save", "--name", "prod", "--url", "https://prod.example/"],
        input=f"{PROD.admin_key}\n",
        env=env(path),
    )
    shown = runner.invoke(app, ["profile", "show", "prod"], env=env(path))
    assert (saved.exit_code, shown.exit_code) == (0, 0)
    assert read_profiles(path) == {"prod": PROD}
    assert shown.stdout == f"profile: prod\nfile: {path}\nurl: https://prod.example\nadmin_key: dc_a…ue\n"
    assert PROD.admin_key not in saved.stdout + shown.stdout


def test_a_command_with_a_readable_profile_file_exits_2_before_any_request(saved: Path) -> None:
    saved.chmod(0o640)
    result = CliRunner().invoke(app, ["city", "list"], env=env(saved))
    assert result.exit_code == 2
    assert result.stderr == f"error: {saved} holds admin keys but its mode is 0640; run: chmod 600 {saved}\n"
