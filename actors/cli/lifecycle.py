"""The run file `downcity up` keeps in its data dir, and `downcity down`, which stops that `up`.

The run file (`<data_dir>/up.json`, 0600) records the pid, URL and Ray address of a running `up`, so `down`
knows what to stop and `status` which cluster to inspect. `up` removes it as the last thing it does.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from downcity.settings import Settings

RUN_FILE = "up.json"
DEFAULT_STOP_TIMEOUT_S = 60.0
_POLL_S = 0.2

console = Console(highlight=False, soft_wrap=True)

DataDirOption = Annotated[
    Path | None, typer.Option(help="data dir of the `downcity up` (env DOWNCITY_DATA_DIR; default ./.downcity)")
]


@dataclass(frozen=True)
class RunFile:
    """What a running `downcity up` records about itself."""

    pid: int
    url: str
    ray_address: str
    # Ray's RAY_AUTH_MODE in `up` ("token" by default): drivers connecting by address must use the same.
    ray_auth_mode: str | None = None

    @staticmethod
    def path(data_dir: Path) -> Path:
        """Where the run file of `data_dir` lives."""
        return data_dir / RUN_FILE

    def save(self, data_dir: Path) -> None:
        """Write the run file, readable only by this user."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path(data_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(self), handle)

    @classmethod
    def load(cls, data_dir: Path) -> RunFile | None:
        """The recorded `up`, or None when there is no readable run file."""
        try:
            data = json.loads(cls.path(data_dir).read_text(encoding="utf-8"))
            auth_mode = data.get("ray_auth_mode")
            return cls(
                pid=int(data["pid"]),
                url=str(data["url"]),
                ray_address=str(data["ray_address"]),
                ray_auth_mode=str(auth_mode) if auth_mode is not None else None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def remove(cls, data_dir: Path) -> None:
        """Delete the run file if it exists."""
        cls.path(data_dir).unlink(missing_ok=True)


def is_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # Field 3 of /proc/<pid>/stat is the state; a zombie has exited and only waits to be reaped.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The option, else the data dir `downcity up` uses (`DOWNCITY_DATA_DIR` or ./.downcity)."""
    return data_dir if data_dir is not None else Settings.from_env().data_dir


def down(
    data_dir: DataDirOption = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for it to stop")] = DEFAULT_STOP_TIMEOUT_S,
) -> None:
    """Stop the `downcity up` running from this data dir (SIGTERM, then wait for it to exit)."""
    directory = resolve_data_dir(data_dir)
    running = RunFile.load(directory)
    if running is None:
        console.print(f"nothing to stop: no {RunFile.path(directory)}", markup=False)
        return
    if not is_alive(running.pid):
        RunFile.remove(directory)
        console.print(f"nothing to stop: pid {running.pid} is gone (removed its stale run file)")
        return
    os.kill(running.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_alive(running.pid) and RunFile.path(directory).exists():
        if time.monotonic() > deadline:
            console.print(f"[red]pid {running.pid} is still running after {timeout:g} s[/]")
            raise typer.Exit(1)
        time.sleep(_POLL_S)
    console.print(f"stopped downcity up (pid {running.pid}, {running.url})", markup=False)
