"""The in-process app over a fake upstream, on both databases: fresh per test, or shared by a module's
read-only cases (each starting with a clean upstream record)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, DatabaseFactory
from tests.unit.http.fakes import App, running_app


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    async with running_app(database_url, tmp_path / "data") as running:
        yield running


@pytest.fixture(scope="module", params=BACKENDS)
async def _module_app(
    request: pytest.FixtureRequest, database_factory: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[App]:
    url = await database_factory.url(str(request.param))
    async with running_app(url, tmp_path_factory.mktemp("data")) as running:
        yield running


@pytest.fixture
def shared_app(_module_app: App) -> App:
    """The module's app for tests that change nothing, with the upstream's record cleared."""
    _module_app.upstream.calls.clear()
    _module_app.upstream.image_calls = 0
    _module_app.upstream.error_code = None
    return _module_app
