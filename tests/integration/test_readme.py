"""The README's first command serves the demo, and the examples it and the README print work."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors.serving import free_port
from tests.conftest import serve_port_base

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
START_DEADLINE_S = 90


@dataclass
class RunningDemo:
    url: str
    token: str
    printed: list[str]


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _read_until_token(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Press Ctrl-C"):
            return lines
    process.kill()
    raise AssertionError("downcity up --demo did not come up:\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def running_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    workdir = tmp_path_factory.mktemp("fresh-checkout")
    port, demo_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DOWNCITY_", "RAY_"))} | {
        "DOWNCITY_SERVE_PORT_BASE": str(serve_port_base(1)),
        "COLUMNS": "400",
    }
    process = subprocess.Popen(
        [str(BIN / "downcity"), "up", "--demo", "--port", str(port), "--demo-port", str(demo_port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        printed = _read_until_token(process)
        token = next(line.split(": ", 1)[1] for line in printed if line.startswith("user_token: "))
        yield RunningDemo(url=f"http://127.0.0.1:{port}", token=token, printed=printed)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=60)
        assert process.stdout is not None
        process.stdout.close()


def test_up_demo_prints_a_token_and_the_printed_curl_works(running_demo: RunningDemo) -> None:
    curl = next(line for line in running_demo.printed if line.startswith("curl "))
    result = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30, check=True)
    assert '"text":"Echo: Hello Downcity"' in result.stdout


def test_up_demo_printed_openai_example_works(running_demo: RunningDemo) -> None:
    command = next(line for line in running_demo.printed if line.startswith("python -c "))
    argv = shlex.split(command)
    result = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "Echo: Hello Downcity"


def test_readme_curl_example_works(running_demo: RunningDemo) -> None:
    (block,) = [b for b in readme_blocks("bash") if b.startswith("curl ")]
    script = block.replace("http://127.0.0.1:8000", running_demo.url)
    result = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, "USER_TOKEN": running_demo.token},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert '"text":"Echo: Hello Downcity"' in result.stdout


def test_readme_python_example_works(running_demo: RunningDemo) -> None:
    (block,) = readme_blocks("python")
    script = f"USER_TOKEN = {running_demo.token!r}\n" + block.replace("http://127.0.0.1:8000", running_demo.url)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "Echo: Hello"
