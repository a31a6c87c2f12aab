"""Shared fixtures: a fresh database per test on both SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from actors.serving import apply_throughput_mode
from downcity.store import Database

SERVE_SLOTS = 6
SERVE_SLOT_SPAN = 700


def _all_free(first: int, count: int) -> bool:
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def _worker_index() -> tuple[int, int]:
    """This process's pytest-xdist worker index and the number of workers ((0, 1) without xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw")), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def _pick_serve_ports() -> int:
    """A block of ports for this run's Serve clusters, below the ephemeral range and free when probed.

    Chosen at random and probed, so test runs side by side on one machine (or a `downcity up` beside them)
    do not pick the same block the way a pid-derived base could; each xdist worker of one run draws from a
    range of its own, so the run's workers never pick overlapping blocks.
    """
    index, workers = _worker_index()
    span = (32_000 - 10_000) // workers
    low = 10_000 + index * span
    rng = random.Random(os.urandom(8))
    for _ in range(100):
        base = rng.randrange(low, low + span - SERVE_SLOTS * SERVE_SLOT_SPAN, 100)
        if _all_free(base, SERVE_SLOTS * SERVE_SLOT_SPAN):
            return base
    raise RuntimeError(f"no free block of ports for Serve in {low}..{low + span}")


_SERVE_PORTS = _pick_serve_ports()


def serve_port_base(slot: int) -> int:
    """Serve's internal ports for cluster `slot` of this run (`slot` < SERVE_SLOTS - 1; the last is `listen_port`'s)."""
    assert 0 <= slot < SERVE_SLOTS
    return _SERVE_PORTS + slot * SERVE_SLOT_SPAN


_LISTEN_PORTS = itertools.count(serve_port_base(SERVE_SLOTS - 1))


def listen_port() -> int:
    """A port for a server a test starts: from this run's probed block, below the ephemeral range, never given twice.

    A port the kernel handed out from the ephemeral range and closed again can be taken by any outgoing connection
    before the server binds it; these are not handed out by the kernel, and no other run of the suite uses this block.
    """
    for port in _LISTEN_PORTS:
        assert port < serve_port_base(SERVE_SLOTS - 1) + SERVE_SLOT_SPAN, "the run used up its listening ports"
        if _all_free(port, 1):
            return port
    raise AssertionError("unreachable: the port counter never ends")


# Serve reads its mode at import time in every Ray process: set it before anything imports Ray.
apply_throughput_mode(port_base=serve_port_base(0))
# A deleted app's ingress replicas stay reachable this long for load balancers to deregister them (30 s by
# default, once per `serve.delete`); the suite's HAProxy runs on loopback and reloads within it.
os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scope scheduling with every test of tests/integration in one scope: they run on one worker
    (they share the session's Ray cluster, and two clusters would halve what each gets of two cores) while the
    unit tests spread over the workers beside them."""
    from xdist.scheduler import LoadScopeScheduling

    class OneClusterScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return "cluster" if nodeid.startswith("tests/integration/") else nodeid

    return OneClusterScheduling(config, log)


PG_ADMIN_URL = os.environ.get("DOWNCITY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
ALL_BACKENDS = ("sqlite", "postgresql")
BACKENDS_ENV = "DOWNCITY_TEST_BACKENDS"
SKIP_POSTGRES_ENV = "DOWNCITY_TEST_SKIP_POSTGRES"
# Read once: each test's environment is cleared of DOWNCITY_* variables.
SKIP_POSTGRES = os.environ.get(SKIP_POSTGRES_ENV) == "1"


def _backends() -> tuple[str, ...]:
    """The databases the database tests run on: both, unless `DOWNCITY_TEST_BACKENDS` names fewer (the
    mutation run's first pass takes SQLite alone and `pytest_report_header` says so)."""
    chosen = os.environ.get(BACKENDS_ENV, ",".join(ALL_BACKENDS)).split(",")
    unknown = set(chosen) - set(ALL_BACKENDS)
    if unknown or not chosen:
        raise pytest.UsageError(f"{BACKENDS_ENV} names {sorted(unknown)}: choose from {', '.join(ALL_BACKENDS)}")
    return tuple(backend for backend in ALL_BACKENDS if backend in chosen)


BACKENDS = _backends()


def pytest_report_header() -> list[str]:
    if BACKENDS == ALL_BACKENDS:
        return []
    return [f"database tests on {', '.join(BACKENDS)} only ({BACKENDS_ENV}); the others are not collected"]


def _pg_url(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


async def _pg_execute(sql: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


class DatabaseFactory:
    """Clones a migrated template so each test starts from an empty, migrated database."""

    def __init__(self, tmp_root: Path) -> None:
        self.tmp_root = tmp_root
        self.run_id = uuid.uuid4().hex[:10]
        self.sqlite_template: Path | None = None
        self.pg_template: str | None = None
        self.pg_error: str | None = None
        self.pg_databases: list[str] = []

    async def sqlite_url(self) -> str:
        if self.sqlite_template is None:
            template = self.tmp_root / "template.db"
            db = Database(f"sqlite+aiosqlite:///{template}")
            await db.migrate()
            await db.dispose()
            self.sqlite_template = template
        target = self.tmp_root / f"db-{uuid.uuid4().hex[:12]}.db"
        shutil.copyfile(self.sqlite_template, target)
        return f"sqlite+aiosqlite:///{target}"

    async def pg_url(self) -> str:
        if self.pg_template is None:
            name = f"downcity_tpl_{self.run_id}"
            try:
                await _pg_execute(f'CREATE DATABASE "{name}"')
            except Exception as exc:
                # PostgreSQL is half of what the suite proves: without it the run fails, unless skipping it is asked.
                if not SKIP_POSTGRES:
                    raise RuntimeError(
                        f"PostgreSQL unreachable at {PG_ADMIN_URL} ({exc}); set {SKIP_POSTGRES_ENV}=1 to skip its tests"
                    ) from exc
                pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL} and {SKIP_POSTGRES_ENV}=1: skipped")
            self.pg_databases.append(name)
            db = Database(_pg_url(name))
            await db.migrate()
            await db.dispose()
            self.pg_template = name
        name = f"downcity_t_{self.run_id}_{uuid.uuid4().hex[:8]}"
        await _pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.pg_template}"')
        self.pg_databases.append(name)
        return _pg_url(name)

    async def url(self, backend: str) -> str:
        return await (self.sqlite_url() if backend == "sqlite" else self.pg_url())

    async def release(self, url: str) -> None:
        """Drop a test's PostgreSQL database as the test ends (SQLite files go with the tmp dir)."""
        name = url.rpartition("/")[2]
        if name in self.pg_databases:
            self.pg_databases.remove(name)
            await _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def drop_all(self) -> None:
        for name in reversed(self.pg_databases):
            await _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def database_factory(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DatabaseFactory]:
    factory = DatabaseFactory(tmp_path_factory.mktemp("databases"))
    yield factory
    await factory.drop_all()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(database_factory: DatabaseFactory, backend: str) -> AsyncIterator[str]:
    # Each test drops its own database, so the session's end does not drop hundreds at once.
    url = await database_factory.url(backend)
    yield url
    await database_factory.release(url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("DOWNCITY_") and name != "DOWNCITY_TEST_PG_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOWNCITY_DATA_DIR", str(tmp_path / "data"))
    yield


T = TypeVar("T")

TEST_MASTER_KEY = "ZG93bmNpdHktdGVzdC1tYXN0ZXIta2V5LTMyYnl0ZXM="
TEST_ADMIN_KEY = "dc_admin_test_key_for_the_suite"


@pytest.fixture(scope="session")
def demo_upstream() -> Iterator[str]:
    """The demo OpenAI-compatible upstream, once per session; yields its base URL (…/v1)."""
    from downcity.demo import DemoUpstream

    with DemoUpstream() as upstream:
        yield upstream.url


@pytest.fixture(scope="session")
def ray_cluster(demo_upstream: str) -> Iterator[float]:
    """One local Ray cluster (HAProxy throughput mode) for the session; yields its start time in seconds.

    Everything Ray workers must see is put in the environment before `ray.init`, since workers inherit it.
    """
    import time

    os.environ["DOWNCITY_MASTER_KEY"] = TEST_MASTER_KEY
    os.environ["DOWNCITY_ADMIN_KEY"] = TEST_ADMIN_KEY
    os.environ["EXAMPLE_UPSTREAM_URL"] = demo_upstream
    os.environ["DOWNCITY_DEMO_UPSTREAM_URL"] = demo_upstream
    os.environ["DEEPSEEK_TIMEOUT_S"] = "2"
    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="downcity", log_to_driver=False)
    yield time.perf_counter() - started
    ray.shutdown()


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout_s: float = 30) -> T:
    """Probe state that no event reports until `accept` holds, failing at the deadline.

    A Ray worker or a background task writes it; this is the one place the tests poll.
    """
    async with asyncio.timeout(timeout_s):
        while not accept(value := await probe()):  # noqa: ASYNC110 - nothing signals this state
            await asyncio.sleep(0.05)
    return value


def eventually_sync(probe: Callable[[], T], accept: Callable[[T], bool], timeout_s: float = 30) -> T:
    """`eventually` for tests without an event loop: probe until `accept` holds, failing at the deadline."""
    import time

    deadline = time.monotonic() + timeout_s
    while not accept(value := probe()):
        assert time.monotonic() < deadline, f"still {value!r} after {timeout_s} s"
        time.sleep(0.05)
    return value
