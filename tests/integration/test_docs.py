"""Every fenced block in docs/ runs, page by page, top to bottom; a block the runner cannot run fails the suite.

- `python` blocks run in one namespace per page; `bash` blocks run with `bash -euo pipefail`, and what they
  `export` reaches the page's later blocks (python blocks read it from `os.environ`).
- A `text` block right after a runnable block is that block's expected output; a `...` line matches any lines
  and `...` inside a line any characters. A block without one must print nothing.
- `yaml` blocks are Serve configs (validated as `serve deploy` would, builder args included) or Ray cluster
  configs (validated by the cluster launcher's schema); `json` blocks must parse.
- Each page gets a fresh Federation: `examples/federation.py` in process over HTTP (SQLite, the demo upstream;
  pages that start no `downcity up` run a second time on PostgreSQL),
  with `DOWNCITY_URL` and `DOWNCITY_ADMIN_KEY` set and `http://127.0.0.1:8000` in blocks and outputs standing
  for its URL. A bash block starting `downcity up` is started in the background on a free port instead
  (stopped by a later `downcity down` or at the end); pages calling `downcity status` without one get the
  session cluster.
- Pages in `CHECKED_ELSEWHERE` describe a cloud cluster no test can start (`ray up`, `createdb` on a database
  host); their owners' tests check their blocks, and the test here checks those tests name the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from tests.conftest import DatabaseFactory, listen_port, serve_port_base
from tests.integration.conftest import ServedApp

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
DEFAULT_URL = "http://127.0.0.1:8000"
ADMIN_KEY = "dc_admin_docs_example_key"
PROVIDER_KEY = "sk-docs-example-key-0001"
BLOCK = re.compile(r"^```([\w-]*)\n(.*?)^```\s*$", re.M | re.S)
RUNNABLE = {"python", "bash", "yaml", "json"}
START_DEADLINE_S = 120
UP_PAGE_TIMEOUT_S = 300
CHECKED_ELSEWHERE = {
    "operators/scale-out.md": ROOT / "tests" / "unit" / "actors" / "test_cluster_yaml.py",
    "operators/metrics.md": ROOT / "tests" / "unit" / "test_metrics_docs.py",
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str
    expected: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The page's runnable blocks, each with the `text` block that follows it, if any."""
    text = page.read_text()
    found: list[Block] = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        language, code = match.group(1), match.group(2)
        if language == "text":
            assert found and found[-1].expected is None, f"{page}:{line}: a text block must follow a code block"
            found[-1] = Block(found[-1].page, found[-1].line, found[-1].language, found[-1].code, code)
            continue
        assert language in RUNNABLE, f"{page}:{line}: the docs runner cannot run a {language or 'plain'!r} block"
        found.append(Block(page, line, language, code))
    return found


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).as_posix() not in CHECKED_ELSEWHERE)


def output_pattern(expected: str) -> re.Pattern[str]:
    parts = []
    for line in expected.rstrip("\n").splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*?".join(re.escape(piece) for piece in line.rstrip().split("...")) + r"\n")
    return re.compile("".join(parts))


def check_output(block: Block, output: str) -> None:
    actual = "".join(line.rstrip() + "\n" for line in output.rstrip().splitlines())
    if block.expected is None:
        if actual:
            pytest.fail(f"{block.where}: prints output but no text block follows it\n--- actual\n{actual}", False)
        return
    if output_pattern(block.expected).fullmatch(actual) is None:
        pytest.fail(f"{block.where}: output differs\n--- expected\n{block.expected}--- actual\n{actual}", False)


class LocalFederation:
    """The example Federation served over HTTP from a thread of this process, on a fresh database (SQLite unless
    `database_url` names another)."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.url = f"http://127.0.0.1:{listen_port()}"
        self._server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        from downcity.http.app import create_app
        from downcity.local import open_local_runtime
        from downcity.quotas import QuotaBook
        from downcity.settings import Settings
        from downcity.store.database import now_ms
        from examples.federation import federation

        settings = Settings(data_dir=self.data_dir, database_url=self.database_url, admin_key=ADMIN_KEY)
        runtime = await open_local_runtime(federation, settings)
        # The page's quota windows hold still: a page that straddles a minute would see its budgets refilled.
        assert isinstance(runtime.quotas, QuotaBook)
        runtime.quotas.clock.freeze(now_ms())
        await runtime.env_store.set("DEEPSEEK_API_KEY", PROVIDER_KEY)
        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._ready.set()
        await self._server.serve()

    def __enter__(self) -> LocalFederation:
        self._thread.start()
        assert self._ready.wait(30), "the local Federation did not start"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError("the local Federation did not answer /health")

    def __exit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.should_exit = True
        self._thread.join(30)


@dataclass
class Page:
    """One page's run: its environment, python namespace and background `downcity up`, if any."""

    url: str
    env: dict[str, str]
    workdir: Path
    namespace: dict[str, Any] = field(default_factory=dict)
    up: subprocess.Popen[str] | None = None

    def run(self, block: Block) -> None:
        code = block.code.replace(DEFAULT_URL, self.url)
        if block.language == "python":
            check_output(block, self._python(block, code).replace(self.url, DEFAULT_URL))
        elif block.language == "bash" and code.startswith("downcity up"):
            self._start_up(block, code)
        elif block.language == "bash":
            check_output(block, self._bash(block, code).replace(self.url, DEFAULT_URL))
        elif block.language == "yaml":
            validate_yaml(block, yaml.safe_load(code))
        else:
            json.loads(code)

    def _python(self, block: Block, code: str) -> str:
        captured = io.StringIO()
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            with contextlib.redirect_stdout(captured), contextlib.chdir(self.workdir):
                exec(compile(code, block.where, "exec"), self.namespace)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return captured.getvalue()

    def _bash(self, block: Block, code: str) -> str:
        with tempfile.NamedTemporaryFile() as exported:
            script = f"trap 'env -0 > {exported.name}' EXIT\n{code}"
            ran = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=self.workdir,
            )
            assert ran.returncode == 0, f"{block.where} exited {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
            after = Path(exported.name).read_bytes().decode().split("\0")
        for item in after:
            name, _, value = item.partition("=")
            if name and name not in ("_", "SHLVL", "PWD", "OLDPWD"):
                self.env[name] = value
        return ran.stdout

    def _start_up(self, block: Block, code: str) -> None:
        port = listen_port()
        self.up = subprocess.Popen(
            [*code.split(), "--port", str(port)],
            env={k: v for k, v in self.env.items() if not k.startswith("RAY_")},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        assert self.up.stdout is not None
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            line = self.up.stdout.readline()
            assert line, f"{block.where}: downcity up exited"
            if "is serving" in line:
                self.env["DOWNCITY_URL"] = self.url = f"http://127.0.0.1:{port}"
                return
        raise AssertionError(f"{block.where}: downcity up did not come up")

    def stop(self) -> None:
        if self.up is None:
            return
        if self.up.poll() is None:
            self.up.terminate()
            self.up.wait(60)
        # An unclosed pipe is an unraisable ResourceWarning when the Popen is collected.
        assert self.up.stdout is not None
        self.up.stdout.close()


PROBE_FIELDS = {"httpGet", "periodSeconds", "timeoutSeconds", "failureThreshold", "successThreshold"}


def validate_probes(block: Block, config: dict[str, Any]) -> None:
    """Kubernetes probes: known fields only, each on a route the app serves."""
    from downcity.http.routes.public import router

    routes = {getattr(route, "path", "") for route in router.routes}
    for name, probe in config.items():
        assert name in ("readinessProbe", "livenessProbe", "startupProbe"), f"{block.where}: {name}?"
        assert set(probe) <= PROBE_FIELDS, f"{block.where}: {name} has {sorted(set(probe) - PROBE_FIELDS)}"
        assert probe["httpGet"]["path"] in routes, f"{block.where}: {name} probes a route the app does not serve"


def validate_yaml(block: Block, config: dict[str, Any]) -> None:
    if "readinessProbe" in config:
        validate_probes(block, config)
        return
    if "providers" in config and "models" in config:
        from downcity.ai.federation_file import load_federation_file

        with tempfile.TemporaryDirectory() as folder:
            file = Path(folder) / "federation.yaml"
            file.write_text(block.code)
            load_federation_file(file)
        return
    if "available_node_types" in config:
        from ray.autoscaler._private.util import validate_config

        validate_config(config)
        return
    from ray.serve.schema import ServeDeploySchema

    from actors.app import AppArgs
    from downcity.runtime import load_federation

    schema = ServeDeploySchema.model_validate(config)
    for app in schema.applications:
        args = AppArgs.model_validate(app.args)
        providers = load_federation(args.federation).providers
        allowed = {"ingress", *(f"provider-{pid}" for pid in providers)}
        unknown = {d.name for d in app.deployments} - allowed
        assert not unknown, f"{block.where}: no such deployment {sorted(unknown)}; the app has {sorted(allowed)}"


def page_env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOWNCITY_", "RAY_ADDRESS"))}
    return env | {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "120",
        "DOWNCITY_URL": url,
        "DOWNCITY_ADMIN_KEY": ADMIN_KEY,
        "DOWNCITY_DATA_DIR": str(tmp_path / "up-data"),
        "DOWNCITY_PROFILE_FILE": str(tmp_path / "profile.json"),
        "DOWNCITY_SERVE_PORT_BASE": str(serve_port_base(3)),
        **extra,
    }


def run_page(page: Page, page_path: Path) -> None:
    try:
        for block in blocks(page_path):
            page.run(block)
    finally:
        page.stop()


def uses_ray(path: Path) -> bool:
    text = path.read_text()
    return "downcity status" in text and "downcity up" not in text


def with_blocks(on_ray: bool) -> list[Path]:
    return [path for path in pages() if "```" in path.read_text() and uses_ray(path) == on_ray]


def starts_up(path: Path) -> bool:
    """Whether the page starts a `downcity up` of its own (which keeps its own database)."""
    return any(block.language == "bash" and block.code.startswith("downcity up") for block in blocks(path))


@contextlib.contextmanager
def serving_example(
    tmp_path: Path, demo_upstream: str, monkeypatch: pytest.MonkeyPatch, database_url: str | None = None
) -> Iterator[str]:
    """The example Federation over the demo upstream, served for one page; yields its URL."""
    monkeypatch.setenv("EXAMPLE_UPSTREAM_URL", demo_upstream)
    import examples.federation

    # The module reads its upstream URL at import: an earlier import without it would call 127.0.0.1:9000.
    if demo_upstream != examples.federation.UPSTREAM_URL:
        importlib.reload(examples.federation)
    with LocalFederation(tmp_path / "federation", database_url) as federation:
        yield federation.url


@pytest.fixture
def page_upstream() -> Iterator[str]:
    """A demo upstream of the page's own: its fault counters (`[[fail-times:N]]`) start at zero for every run."""
    from downcity.demo import DemoUpstream

    with DemoUpstream() as upstream:
        yield upstream.url


@pytest.fixture
def local_federation(tmp_path: Path, page_upstream: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serving_example(tmp_path, page_upstream, monkeypatch) as url:
        yield url


@pytest.fixture
async def postgres_federation(
    tmp_path: Path, page_upstream: str, monkeypatch: pytest.MonkeyPatch, database_factory: DatabaseFactory
) -> AsyncIterator[str]:
    database_url = await database_factory.url("postgresql")
    with serving_example(tmp_path, page_upstream, monkeypatch, database_url) as url:
        yield url
    await database_factory.release(database_url)


def test_every_block_in_the_docs_can_run() -> None:
    found = {path.relative_to(DOCS).as_posix(): len(blocks(path)) for path in pages()}
    assert {"operators/deploy.md", "operators/keys.md", "products/user-client.md"} <= set(found)
    assert all(count > 0 for name, count in found.items() if name != "README.md"), found


@pytest.mark.parametrize(("page", "test_file"), sorted(CHECKED_ELSEWHERE.items()))
def test_pages_checked_elsewhere_are_named_by_their_tests(page: str, test_file: Path) -> None:
    assert Path(page).name in test_file.read_text()


# A page that runs `downcity up` starts a Ray cluster of its own, which on a loaded machine takes minutes.
@pytest.mark.timeout(UP_PAGE_TIMEOUT_S)
@pytest.mark.parametrize("path", with_blocks(on_ray=False), ids=lambda p: str(p.relative_to(DOCS)))
def test_page(path: Path, local_federation: str, tmp_path: Path) -> None:
    run_page(Page(local_federation, page_env(local_federation, tmp_path), tmp_path), path)


@pytest.mark.parametrize(
    "path", [p for p in with_blocks(on_ray=False) if not starts_up(p)], ids=lambda p: str(p.relative_to(DOCS))
)
async def test_page_on_postgresql(path: Path, postgres_federation: str, tmp_path: Path) -> None:
    page = Page(postgres_federation, page_env(postgres_federation, tmp_path), tmp_path)
    await asyncio.to_thread(run_page, page, path)


@pytest.mark.ray
@pytest.mark.parametrize("path", with_blocks(on_ray=True), ids=lambda p: str(p.relative_to(DOCS)))
async def test_page_on_the_session_cluster(
    path: Path, local_federation: str, served: ServedApp, tmp_path: Path
) -> None:
    import ray

    env = page_env(local_federation, tmp_path, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    await asyncio.to_thread(run_page, Page(local_federation, env, tmp_path), path)
