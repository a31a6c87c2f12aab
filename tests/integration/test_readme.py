"""The README's first command serves the demo once ready, and every example it and the README print works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from actors.cli.banner import demo_examples
from actors.cli.up import DEMO_CREDIT
from tests.conftest import eventually_sync, listen_port, serve_port_base

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
START_DEADLINE_S = 120
READY_DEADLINE_S = 30
TITLES = [example.title for example in demo_examples("http://u", "t", "a")]
HELLO = "Echo: Hello Downcity"


@dataclass
class RunningDemo:
    url: str
    token: str
    printed: list[str]

    def example(self, title: str) -> str:
        """The code printed under `# <title>`, up to the blank line that ends it."""
        start = self.printed.index(f"# {title}") + 1
        end = self.printed.index("", start)
        return "\n".join(self.printed[start:end])


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _read_banner(process: subprocess.Popen[str]) -> list[str]:
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
    port, demo_port = listen_port(), listen_port()
    # Narrow columns, not a terminal: what a CI log sees. Nothing printed may wrap.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DOWNCITY_", "RAY_"))} | {
        "DOWNCITY_SERVE_PORT_BASE": str(serve_port_base(1)),
        "COLUMNS": "40",
    }
    command = [str(BIN / "downcity"), "up", "--demo", "--port", str(port), "--demo-port", str(demo_port)]
    # The context closes the stdout pipe on the way out; an unclosed one is an unraisable ResourceWarning.
    with subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            printed = _read_banner(process)
            token = next(line.split(": ", 1)[1] for line in printed if line.startswith("user_token: "))
            yield RunningDemo(url=f"http://127.0.0.1:{port}", token=token, printed=printed)
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def run_example(code: str) -> str:
    """Run printed code as a user would paste it, from the repository root."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_ADDRESS")}
    ran = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert ran.returncode == 0, f"{code}\nexited {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
    return ran.stdout


def stream_text(sse: str) -> str:
    events = [event.removeprefix("data: ") for event in sse.split("\n\n") if event.startswith("data: ")]
    chunks = [json.loads(event) for event in events if event != "[DONE]"]
    assert events[-1] == "[DONE]"
    return "".join(chunk["delta"] for chunk in chunks if chunk["type"] == "text-delta")


def test_up_demo_prints_every_pathways_example_under_its_title(running_demo: RunningDemo) -> None:
    assert [line.removeprefix("# ") for line in running_demo.printed if line.startswith("# ")] == TITLES


def test_the_printed_token_is_on_one_line_and_works(running_demo: RunningDemo) -> None:
    (line,) = [line for line in running_demo.printed if line.startswith("user_token: ")]
    headers = {"Authorization": f"Bearer {line.removeprefix('user_token: ')}"}

    def account() -> tuple[int, str, int, int, int]:
        """The token's balance answer, and what its usage rows charged (the module's other tests call too)."""
        balance = httpx.get(f"{running_demo.url}/v1/balance/me", headers=headers, timeout=30)
        usage = httpx.get(f"{running_demo.url}/v1/usage/me", params={"limit": 500}, headers=headers, timeout=30)
        charged = sum(int(row["charge_microcredits"]) for row in usage.json()["items"])
        body = balance.json()
        return balance.status_code, body["user_id"], body["balance"], body["held"], charged

    # Every call of the module's other tests is billed in the end: then the demo credit is the balance plus them.
    status, user_id, balance, _, charged = eventually_sync(account, lambda state: state[3] == 0)
    assert (status, user_id, balance + charged) == (200, "demo-user", DEMO_CREDIT)


def test_ready_answers_200_naming_every_part_and_then_a_call_succeeds(running_demo: RunningDemo) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    ready = httpx.get(f"{running_demo.url}/ready", timeout=10)
    while ready.status_code != 200 and time.monotonic() < deadline:
        ready = httpx.get(f"{running_demo.url}/ready", timeout=10)
    headers = {"Authorization": f"Bearer {running_demo.token}"}
    called = httpx.post(f"{running_demo.url}/v1/ai/text", json={"prompt": "ready?"}, headers=headers, timeout=30)
    assert (ready.status_code, ready.json()) == (
        200,
        {
            "status": "ready",
            "checks": {
                "required_env": "ok",
                "provider-demo": "ok",
                "provider-demo-images": "ok",
                "ledger": "ok",
                "job_manager": "ok",
            },
        },
    )
    assert (called.status_code, called.json()["parts"][0]["text"]) == (200, "Echo: ready?")


def test_the_text_example_answers_from_demo_chat(running_demo: RunningDemo) -> None:
    reply = json.loads(run_example(running_demo.example("Text")))
    assert (reply["parts"][0]["text"], reply["metadata"]["model"]) == (HELLO, "demo-chat")


def test_the_stream_example_streams_the_ui_message_protocol(running_demo: RunningDemo) -> None:
    assert stream_text(run_example(running_demo.example("Stream (AI SDK UI message stream)"))) == HELLO


def test_the_openai_chat_example_prints_the_reply(running_demo: RunningDemo) -> None:
    assert run_example(running_demo.example("Chat completions with the openai client")) == HELLO + "\n"


def test_the_openai_streaming_example_prints_the_streamed_reply(running_demo: RunningDemo) -> None:
    assert run_example(running_demo.example("Streaming chat completions")) == HELLO + "\n"


def test_the_media_fallback_example_runs_on_demo_vision(running_demo: RunningDemo) -> None:
    reply = json.loads(run_example(running_demo.example(TITLES[4])))
    assert (reply["parts"][0]["text"], reply["metadata"]["model"]) == ("Echo: What is this? [image]", "demo-vision")


def test_the_image_example_polls_the_job_to_its_two_images(running_demo: RunningDemo) -> None:
    printed = run_example(running_demo.example(TITLES[5]))
    assert printed == "succeeded ['image/png', 'image/png']\n"


def test_the_batch_example_generates_both_images_through_ray_tasks(running_demo: RunningDemo) -> None:
    printed = run_example(running_demo.example(TITLES[6]))
    assert printed.splitlines()[-1] == "2 of 2 images generated"


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
